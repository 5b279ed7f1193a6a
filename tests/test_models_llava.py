"""ns.load on a tiny LLaVA-1.5 saved with save_pretrained: layers, residual stream, prompts, image mask, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnshift.data import Sample
from nnshift.errors import AdapterValidationError, ImageReadError, LayerOutOfRangeError, UnsupportedModelError
from nnshift.models import VLM, ModelAdapter, load, register_adapter, supported_architectures, unregister_adapter
from nnshift.models.testing import build_tiny, tiny_image, tiny_tokenizer


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # vision tower (6 layers) deeper than the language model (2 layers)
    return build_tiny("llava", tmp_path_factory.mktemp("llava") / "m", vision_layers=6, text_layers=2)


@pytest.fixture(scope="module")
def vlm(llava_dir: Path) -> VLM:
    return load(llava_dir, dtype="float32")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [
        Sample(id="a", prompt="what color is the dog ?", image=tiny_image(0)),
        Sample(id="b", prompt="how many cats ?", image=tiny_image(1, size=(64, 48))),
    ]


def hook_outputs(module: torch.nn.Module, run) -> list:
    """Outputs of `module` seen by a plain torch forward hook while `run()` executes."""
    seen: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


def test_load_exposes_the_model(vlm: VLM, llava_dir: Path) -> None:
    from nnsight.modeling.transformers import TransformersModel
    from transformers import LlavaForConditionalGeneration

    assert isinstance(vlm.model, TransformersModel)
    assert isinstance(vlm.hf, LlavaForConditionalGeneration)
    assert vlm.adapter.family == "llava"
    assert vlm.is_multimodal and vlm.processor is not None
    assert vlm.name == str(llava_dir)
    assert (vlm.n_layers, vlm.hidden_size) == (2, 32)
    assert vlm.vocab_size == vlm.hf.lm_head.out_features == len(vlm.tokenizer)
    assert vlm.device == torch.device("cpu") and vlm.dtype == torch.float32
    assert "LlavaForConditionalGeneration" in supported_architectures()


def test_layer_index_normalises_and_rejects(vlm: VLM) -> None:
    assert [vlm.layer_index(i) for i in (0, 1, -1, -2)] == [0, 1, 1, 0]
    for bad in (2, 5, -3, 40):
        with pytest.raises(LayerOutOfRangeError) as err:
            vlm.layer(bad)
        assert f"layer {bad} is out of range" in str(err.value)
        assert "has 2 decoder layers, valid indices are -2..1" in str(err.value)
        assert err.value.hint


def test_layers_are_the_language_model_not_the_vision_tower(vlm: VLM) -> None:
    hf = vlm.hf
    assert len(hf.model.vision_tower.encoder.layers) == 6  # deeper than the LM
    vision = {id(m) for m in hf.model.vision_tower.modules()}
    for i in range(vlm.n_layers):
        assert vlm.layer(i)._module is hf.model.language_model.layers[i]
        assert id(vlm.layer(i)._module) not in vision
    with pytest.raises(LayerOutOfRangeError):
        vlm.layer(5)  # exists in the vision encoder, not in the LM


def test_prepare_left_pads_and_places_image_tokens(vlm: VLM, samples: list[Sample]) -> None:
    inputs = vlm.prepare(samples)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert ids.shape == mask.shape and ids.device.type == "cpu"
    # left padding: the last column is real for every row, the shorter row starts with padding
    assert bool(mask[:, -1].all())
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and ids[short, 0] == vlm.pad_token_id
    tokens = [vlm.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    expected = torch.tensor([[t == "<image>" for t in row] for row in tokens])
    got = vlm.image_token_mask(ids)
    assert got.dtype == torch.bool and torch.equal(got, expected)
    assert got.sum(1).tolist() == [16, 16]  # (32 / 8) ** 2 patches per image
    # the generation prompt ends the input
    assert vlm.decode(ids[0]).endswith("ASSISTANT:")


def test_text_only_sample_has_no_image_tokens(vlm: VLM) -> None:
    inputs = vlm.prepare([Sample(id="t", prompt="describe the image")])
    assert "pixel_values" not in inputs
    assert not vlm.image_token_mask(inputs["input_ids"]).any()
    with vlm.model.trace(**inputs):
        h = vlm.get_resid(-1).save()
    assert h.shape == (1, inputs["input_ids"].shape[1], 32)


def test_image_paths_and_unreadable_images(vlm: VLM, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    tiny_image(3).save(path)
    inputs = vlm.prepare([Sample(id="p", prompt="what is this ?", image=path)])
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ImageReadError, match="'missing'"):
        vlm.prepare([Sample(id="missing", prompt="x", image=tmp_path / "nope.png")])


def test_residual_stream_in_a_trace_matches_torch_hooks(vlm: VLM, samples: list[Sample]) -> None:
    inputs = vlm.prepare(samples)
    with vlm.model.trace(**inputs):
        mid = vlm.get_resid(0).save()
        last = vlm.get_resid(-1).save()
        logits = vlm.model.output.logits.save()
    s = inputs["input_ids"].shape[1]
    assert mid.shape == last.shape == (2, s, 32)
    ref_mid = hook_outputs(vlm.hf.model.language_model.layers[0], lambda: vlm.hf(**inputs))[0]
    ref_last = hook_outputs(vlm.hf.model.language_model.layers[1], lambda: vlm.hf(**inputs))[0]
    torch.testing.assert_close(mid, ref_mid)
    torch.testing.assert_close(last, ref_last)
    # logit lens of the last block's output = the model's own logits
    lens = vlm.logit_lens(last[:, -1])
    assert lens.dtype == torch.float32 and lens.shape == (2, vlm.vocab_size)
    torch.testing.assert_close(lens, logits[:, -1].float(), rtol=1e-5, atol=1e-5)


def test_set_resid_edits_the_forward(vlm: VLM, samples: list[Sample]) -> None:
    inputs = vlm.prepare(samples)
    shift = torch.randn(32)
    with vlm.model.trace(**inputs):
        vlm.set_resid(0, vlm.get_resid(0) + shift)
        edited = vlm.model.output.logits.save()

    def add_shift(_m, _i, out):
        return out + shift

    handle = vlm.hf.model.language_model.layers[0].register_forward_hook(add_shift)
    try:
        with torch.no_grad():
            ref = vlm.hf(**inputs).logits
    finally:
        handle.remove()
    with torch.no_grad():
        plain = vlm.hf(**inputs).logits
    torch.testing.assert_close(edited, ref)
    assert not torch.allclose(edited, plain)


def test_generate_matches_hf_and_reads_each_step(vlm: VLM, samples: list[Sample]) -> None:
    inputs = vlm.prepare(samples)
    n = 3
    steps: list = []
    with vlm.model.generate(**inputs, max_new_tokens=n, do_sample=False) as tracer:
        for _ in tracer.iter[0:n]:
            steps.append(vlm.get_resid(1).save())
        out = tracer.result.save()
    with torch.no_grad():
        ref = vlm.hf.generate(**inputs, max_new_tokens=n, do_sample=False)
    s = inputs["input_ids"].shape[1]
    assert out.shape == (2, s + n)
    assert torch.equal(out, ref)
    assert [tuple(h.shape) for h in steps] == [(2, s, 32), (2, 1, 32), (2, 1, 32)]
    assert isinstance(vlm.decode(out[0, s:]), str)


def test_eos_pad_decode(vlm: VLM) -> None:
    assert vlm.tokenizer.eos_token_id in vlm.eos_token_ids
    assert isinstance(vlm.pad_token_id, int)
    ids = vlm.tokenizer("what color", add_special_tokens=True)["input_ids"]
    assert vlm.decode(ids) == "what color"
    assert vlm.decode(torch.tensor(ids)) == "what color"


def test_load_from_objects_and_dtype(vlm: VLM, llava_dir: Path, samples: list[Sample]) -> None:
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    from_hf = load(hf)
    assert from_hf.hf is hf and from_hf.n_layers == 2
    from_nnsight = load(vlm.model)
    assert from_nnsight.model is vlm.model
    assert load(vlm) is vlm
    on_cpu = load(llava_dir, device_map="cpu")
    assert on_cpu.device == torch.device("cpu")
    bf = load(llava_dir, dtype="bfloat16")
    assert bf.dtype == torch.bfloat16
    inputs = bf.prepare(samples)
    assert inputs["pixel_values"].dtype == torch.bfloat16
    with bf.model.trace(**inputs):
        h = bf.get_resid(-1).save()
    assert h.dtype == torch.bfloat16
    assert bf.logit_lens(h[:, -1]).dtype == torch.float32


def test_validation_rejects_a_path_into_the_vision_tower(llava_dir: Path) -> None:
    bad = ModelAdapter(
        family="llava-bad",
        architectures=("LlavaForConditionalGeneration",),
        layers="model.vision_tower.encoder.layers",
        final_norm="model.language_model.norm",
    )
    with pytest.raises(AdapterValidationError, match="6 layers but the text config says 2"):
        load(llava_dir, adapter=bad)
    missing = ModelAdapter(
        family="llava-bad2",
        architectures=("LlavaForConditionalGeneration",),
        layers="model.language_model.blocks",
        final_norm="model.language_model.norm",
    )
    with pytest.raises(AdapterValidationError, match="not found"):
        load(llava_dir, adapter=missing)


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import OPTConfig, OPTForCausalLM

    tok = tiny_tokenizer("gpt2")
    cfg = OPTConfig(
        vocab_size=len(tok),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("opt") / "m"
    OPTForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_unsupported_architecture_then_registered(opt_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        load(opt_dir)
    msg = str(err.value)
    assert "OPTForCausalLM" in msg and "LlavaForConditionalGeneration" in msg and "LlamaForCausalLM" in msg
    assert "register_adapter" in (err.value.hint or "")
    opt_adapter = register_adapter(
        ModelAdapter(
            family="opt",
            architectures=("OPTForCausalLM",),
            layers="model.decoder.layers",
            final_norm="model.decoder.final_layer_norm",
            multimodal=False,
            task="text-generation",
            text_config=None,
        )
    )
    try:
        assert "OPTForCausalLM" in supported_architectures()
        opt = load(opt_dir)
        assert opt.n_layers == 2 and not opt.is_multimodal
        inputs = opt.prepare([Sample(id="o", prompt="what color")])
        with opt.model.trace(**inputs):
            h = opt.get_resid(-1).save()
        assert h.shape[-1] == 32
    finally:
        unregister_adapter(opt_adapter)
    assert "OPTForCausalLM" not in supported_architectures()


def test_lazy_meta_load_dispatches_on_first_trace(llava_dir: Path, vlm: VLM, samples: list[Sample]) -> None:
    lazy = load(llava_dir, dispatch=False)  # weightless meta model, as used for remote (NDIF) execution
    assert lazy.is_meta and lazy.device == torch.device("cpu") and lazy.n_layers == 2
    inputs = lazy.prepare(samples)
    with lazy.model.trace(**inputs):
        h = lazy.get_resid(-1).save()
    assert not lazy.is_meta
    with vlm.model.trace(**inputs):
        ref = vlm.get_resid(-1).save()
    assert torch.equal(h, ref)
    torch.testing.assert_close(lazy.logit_lens(h[:, -1]), vlm.logit_lens(ref[:, -1]))


def test_logit_lens_rejects_wrong_hidden_size(vlm: VLM) -> None:
    from nnshift.errors import HiddenSizeMismatchError

    with pytest.raises(HiddenSizeMismatchError, match="hidden size 32"):
        vlm.logit_lens(torch.zeros(2, 16))
