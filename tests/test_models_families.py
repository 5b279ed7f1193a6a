"""Every supported family, built tiny from a config, saved, and loaded through ns.load(path).

Each multimodal model has a vision tower deeper (4 layers) than its language model (3 layers), so a layer
index that exists only in the vision encoder must be refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnshift.data import Sample
from nnshift.errors import LayerOutOfRangeError
from nnshift.models import VLM, load
from nnshift.models.testing import MULTIMODAL_ARCHES, TEXT_ARCHES, build_tiny, tiny_image

VISION_LAYERS, TEXT_LAYERS = 4, 3

FAMILY = {
    "llava": ("llava", "LlavaForConditionalGeneration"),
    "llava_next": ("llava_next", "LlavaNextForConditionalGeneration"),
    "qwen2_vl": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2_vl", "Qwen2_5_VLForConditionalGeneration"),
    "idefics2": ("idefics2", "Idefics2ForConditionalGeneration"),
    "idefics3": ("idefics3", "Idefics3ForConditionalGeneration"),
    "smolvlm": ("idefics3", "SmolVLMForConditionalGeneration"),
    "gemma3": ("gemma3", "Gemma3ForConditionalGeneration"),
    "paligemma": ("paligemma", "PaliGemmaForConditionalGeneration"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("qwen3_vl", "Qwen3VLMoeForConditionalGeneration"),
    "llava_onevision": ("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
    "internvl": ("internvl", "InternVLForConditionalGeneration"),
    "aya_vision": ("aya_vision", "AyaVisionForConditionalGeneration"),
    # no registered adapter: the generic adapter infers them (tests/test_models_generic.py)
    "deepseek_vl": ("generic:DeepseekVLForConditionalGeneration", "DeepseekVLForConditionalGeneration"),
    "video_llava": ("generic:VideoLlavaForConditionalGeneration", "VideoLlavaForConditionalGeneration"),
    "mllama": ("mllama", "MllamaForConditionalGeneration"),
    "gemma4": ("gemma4", "Gemma4ForConditionalGeneration"),  # builders still to come for gemma4 and glm4v
    "glm4v": ("glm4v", "Glm4vForConditionalGeneration"),
    "glm4v_moe": ("glm4v", "Glm4vMoeForConditionalGeneration"),
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("llama", "Qwen2ForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
}

_LOADED: dict[str, VLM] = {}


def _needs(arch: str) -> None:
    if arch == "smolvlm":
        pytest.importorskip("num2words", reason="transformers' SmolVLMProcessor needs num2words")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def get_vlm(arch: str, root: Path) -> VLM:
    """Build (once per module) and load the tiny model of `arch`."""
    _needs(arch)
    if arch not in _LOADED:
        opts = {"vision_layers": VISION_LAYERS, "text_layers": TEXT_LAYERS} if arch in MULTIMODAL_ARCHES else {}
        if arch in TEXT_ARCHES:
            opts = {"layers": TEXT_LAYERS}
        path = build_tiny(arch, root / arch, **opts)
        _LOADED[arch] = load(path)
    return _LOADED[arch]


def samples_for(vlm: VLM) -> list[Sample]:
    with_image = vlm.is_multimodal
    return [
        Sample(id="a", prompt="what color is the dog ?", image=tiny_image(0) if with_image else None),
        Sample(id="b", prompt="how many cats", image=tiny_image(1, size=(64, 48)) if with_image else None),
    ]


def hidden_states_of(vlm: VLM, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The HF forward's own ``output_hidden_states`` (embeddings, then one entry per decoder block)."""
    with torch.no_grad():
        return vlm.hf(**inputs, output_hidden_states=True).hidden_states


def resid_by_hook(vlm: VLM, i: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The block-`i` output seen by a plain torch forward hook on the HF module (independent of nnsight)."""
    seen: list[torch.Tensor] = []

    def hook(_m, _i, out):
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = vlm.layer_module(i).register_forward_hook(hook)
    try:
        with torch.no_grad():
            vlm.hf(**inputs)
    finally:
        handle.remove()
    return seen[0]


ALL = list(MULTIMODAL_ARCHES) + list(TEXT_ARCHES)


@pytest.mark.parametrize("arch", ALL)
def test_load_validates_layers(arch: str, root: Path) -> None:
    vlm = get_vlm(arch, root)
    family, cls_name = FAMILY[arch]
    assert type(vlm.hf).__name__ == cls_name and vlm.adapter.family == family
    assert vlm.n_layers == TEXT_LAYERS and vlm.hidden_size == 32
    assert vlm.is_multimodal == (arch in MULTIMODAL_ARCHES)
    assert (vlm.processor is not None) == vlm.is_multimodal
    assert vlm.vocab_size == vlm.hf.get_output_embeddings().out_features
    layer_modules = {id(vlm.layer(i)._module) for i in range(TEXT_LAYERS)}
    assert layer_modules == {id(vlm.layer_module(i)) for i in range(TEXT_LAYERS)}
    if vlm.is_multimodal:
        lm = vlm.hf.get_decoder() if hasattr(vlm.hf, "get_decoder") else None
        vision_ids = {
            id(m)
            for name, m in vlm.hf.named_modules()
            if any(k in name for k in ("vision_tower", "vision_model", "visual", "image_tower"))
        }
        assert vision_ids, "the tiny model should have a vision tower"
        assert not layer_modules & vision_ids
        if lm is not None:
            assert all(id(vlm.layer_module(i)) in {id(m) for m in lm.modules()} for i in range(TEXT_LAYERS))
    with pytest.raises(LayerOutOfRangeError, match=f"valid indices are -{TEXT_LAYERS}..{TEXT_LAYERS - 1}"):
        vlm.layer(VISION_LAYERS - 1 if vlm.is_multimodal else TEXT_LAYERS)
    assert vlm.tokenizer.eos_token_id in vlm.eos_token_ids


@pytest.mark.parametrize("arch", ALL)
def test_trace_reads_middle_and_last_residual_and_image_mask(arch: str, root: Path) -> None:
    vlm = get_vlm(arch, root)
    inputs = vlm.prepare(samples_for(vlm))
    ids = inputs["input_ids"]
    assert bool(inputs["attention_mask"][:, -1].all())  # left padding
    # image-token mask against the token strings
    mask = vlm.image_token_mask(ids)
    if vlm.is_multimodal:
        tokens = [vlm.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
        expected = torch.tensor([[t == vlm.adapter.image_token for t in row] for row in tokens])
        assert torch.equal(mask, expected)
        assert (mask.sum(1) > 0).all()
    else:
        assert not mask.any()
    mid, last = 1, -1
    with vlm.model.trace(**inputs):
        h_mid = vlm.get_resid(mid).save()
        h_last = vlm.get_resid(last).save()
        out = vlm.model.output.save()
    logits = out.logits if hasattr(out, "logits") else out[0]
    assert h_mid.shape == h_last.shape == (*ids.shape, 32)
    # the longest (unpadded) row must match a plain HF forward read with a torch hook
    full = int(inputs["attention_mask"].sum(1).argmax())
    if bool(inputs["attention_mask"][full].all()):
        torch.testing.assert_close(h_mid[full], resid_by_hook(vlm, mid, inputs)[full], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(h_last[full], resid_by_hook(vlm, last, inputs)[full], rtol=1e-4, atol=1e-5)
    # the model's own output_hidden_states: entry i + 1 is block i's output; the last entry is after the final norm
    hs = hidden_states_of(vlm, inputs)
    assert len(hs) == vlm.n_layers + 1
    if bool(inputs["attention_mask"][full].all()):
        torch.testing.assert_close(h_mid[full], hs[mid + 1][full], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(vlm._norm(h_last[full]), hs[-1][full], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vlm.logit_lens(h_last[:, -1]), logits[:, -1].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ALL)
def test_padding_does_not_change_a_sample(arch: str, root: Path) -> None:
    vlm = get_vlm(arch, root)
    both = samples_for(vlm)
    batch = vlm.prepare(both)
    short = int(batch["attention_mask"].sum(1).argmin())
    alone = vlm.prepare([both[short]])
    n = alone["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][short, -n:], alone["input_ids"][0])
    with vlm.model.trace(**batch):
        hb = vlm.get_resid(-1).save()
    with vlm.model.trace(**alone):
        ha = vlm.get_resid(-1).save()
    torch.testing.assert_close(hb[short, -n:], ha[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", ALL)
def test_generate_matches_hf_generate(arch: str, root: Path) -> None:
    vlm = get_vlm(arch, root)
    inputs = vlm.prepare(samples_for(vlm))
    n = 3
    with vlm.model.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n) as tracer:
        out = tracer.result.save()
    with torch.no_grad():
        ref = vlm.hf.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    assert out.shape == (2, inputs["input_ids"].shape[1] + n)
    assert torch.equal(out, ref)
    assert all(isinstance(vlm.decode(row[-n:]), str) for row in out)


@pytest.mark.parametrize("arch", [a for a in MULTIMODAL_ARCHES if a != "paligemma"])
def test_text_only_prompt_on_a_multimodal_model(arch: str, root: Path) -> None:
    vlm = get_vlm(arch, root)
    inputs = vlm.prepare([Sample(id="t", prompt="describe the image"), Sample(id="u", prompt="what")])
    assert not vlm.image_token_mask(inputs["input_ids"]).any()
    with vlm.model.trace(**inputs):
        h = vlm.get_resid(-1).save()
    assert h.shape == (*inputs["input_ids"].shape, 32) and torch.isfinite(h).all()


LLAMA_LIKE = [
    ("MistralConfig", "MistralForCausalLM"),
    ("Qwen3Config", "Qwen3ForCausalLM"),
    ("GemmaConfig", "GemmaForCausalLM"),
    ("Gemma2Config", "Gemma2ForCausalLM"),
    ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    ("Phi3Config", "Phi3ForCausalLM"),
    ("OlmoConfig", "OlmoForCausalLM"),
    ("Olmo2Config", "Olmo2ForCausalLM"),
]


@pytest.mark.parametrize(("config_name", "model_name"), LLAMA_LIKE)
def test_other_llama_like_causal_lms(config_name: str, model_name: str, root: Path) -> None:
    import transformers

    from nnshift.models.testing import tiny_tokenizer

    tok = tiny_tokenizer("llama")
    cfg = getattr(transformers, config_name)(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    folder = root / model_name
    getattr(transformers, model_name)(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    vlm = load(folder)
    assert type(vlm.hf).__name__ == model_name and vlm.n_layers == 2
    inputs = vlm.prepare([Sample(id="a", prompt="what color is the dog")])
    with vlm.model.trace(**inputs):
        h = vlm.get_resid(-1).save()
        logits = vlm.model.output.logits.save()
    # final norm + unembedding (+ soft-capping for Gemma 2) reproduce the model's logits
    torch.testing.assert_close(vlm.logit_lens(h[:, -1]), logits[:, -1].float(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- token of interest, steering, remote


@pytest.mark.parametrize("arch", ALL)
def test_token_of_interest_in_the_answer(arch: str, root: Path) -> None:
    """The TOI state is the one whose greedy prediction starts the word, and equals a hooked HF generate's state."""
    from nnshift import positions as P
    from nnshift.capture import capture

    vlm = get_vlm(arch, root)
    samples = samples_for(vlm)
    inputs = vlm.prepare(samples)
    n = 6
    seen: list[torch.Tensor] = []
    handle = vlm.layer_module(-1).register_forward_hook(
        lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.no_grad():
            out = vlm.hf.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=vlm.pad_token_id)
    finally:
        handle.remove()
    plen = inputs["input_ids"].shape[1]
    states = torch.cat(seen, dim=1)  # [batch, plen + n - 1, d]: prefill, then one position per step
    gen = out[:, plen:]
    words = [w for b in range(len(samples)) for w in vlm.decode(gen[b]).split() if w.isalnum()]
    words += [w for b in range(len(samples)) for w in vlm.decode(gen[b]).split() if "\ufffd" not in w]
    if not words:
        pytest.skip(f"{arch}: the random tiny model answered no word")
    word = words[0]
    acts = capture(vlm, samples, layer=-1, at=P.token_of_interest(word), max_new_tokens=n, progress=False)
    assert len(acts) >= 1
    for row, sid in enumerate(acts.ids):
        b = [s.id for s in samples].index(sid)
        k = acts.meta[row]["toi_step"]
        # gen[k] starts the word (a token may span words): the answer before it lacks the word, and one of the
        # words that token k adds or extends is a prefix of it
        before = vlm.tokenizer.decode(gen[b, :k]).split()
        upto = vlm.tokenizer.decode(gen[b, : k + 1]).split()
        assert word not in before
        assert any(word.startswith(w) for w in upto[max(len(before) - 1, 0) :])
        torch.testing.assert_close(acts.tensor[row], states[b, plen - 1 + k].float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ALL)
def test_patch_at_alpha_zero_is_unsteered_and_alpha_changes_the_output(arch: str, root: Path) -> None:
    from nnshift.generation import run_generation
    from nnshift.steering import SteeringVector

    vlm = get_vlm(arch, root)
    inputs = vlm.prepare(samples_for(vlm))
    vec = SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(0)) * 8, layer=1)
    last = vlm.n_layers - 1
    plain = run_generation(vlm, inputs, 3, layers=[last])
    runs = {a: run_generation(vlm, inputs, 3, layers=[last], edit=vec.patch(a).bind(vlm, inputs)) for a in (0.0, 4.0)}
    assert runs[0.0].tokens == plain.tokens
    assert all(torch.equal(s, p) for s, p in zip(runs[0.0].states[last], plain.states[last], strict=True))
    assert not torch.equal(runs[4.0].states[last][0], plain.states[last][0])


@pytest.fixture(scope="module")
def remote_local(root: Path) -> dict[str, dict]:
    """One subprocess runs tests/families/remote_local.py on every family's saved tiny model."""
    import json
    import os
    import subprocess
    import sys

    folders = {arch: str(root / arch) for arch in ALL}
    for arch in ALL:
        get_vlm(arch, root)  # builds the folder
    script = Path(__file__).parent / "families" / "remote_local.py"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, str(script), *folders.values()], capture_output=True, text=True, timeout=900, cwd=repo, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    by_folder = {r["folder"]: r for r in map(json.loads, done.stdout.strip().splitlines())}
    return {arch: by_folder[folder] for arch, folder in folders.items()}


@pytest.mark.parametrize("arch", ALL)
def test_remote_local_capture_and_steered_generation_equal_local(arch: str, remote_local: dict[str, dict]) -> None:
    """nnsight's remote="local" dry run (serialised as for NDIF) gives the local capture and steered ids, bit for bit."""
    res = remote_local[arch]
    assert res["same_capture"] and res["same_steered_ids"]
    assert res["patch_acted"]


def test_mllama_cross_attention_layers(root: Path) -> None:
    """Layer 1 of the tiny Mllama is a cross-attention layer: read with an image, skipped by HF on a text-only prompt."""
    from nnsight.intervention.interleaver import OutOfOrderError

    vlm = get_vlm("mllama", root)
    assert type(vlm.layer_module(1)).__name__ == "MllamaCrossAttentionDecoderLayer"
    inputs = vlm.prepare(samples_for(vlm))
    with vlm.model.trace(**inputs):
        h0 = vlm.get_resid(0).save()
        h1 = vlm.get_resid(1).save()
    assert not torch.equal(h0, h1)  # the image, seen through cross-attention, changed the stream
    text = vlm.prepare([Sample(id="t", prompt="what color")])
    with pytest.raises(OutOfOrderError), vlm.model.trace(**text):
        vlm.get_resid(1).save()
