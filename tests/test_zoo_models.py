"""The shipped shapes checkpoints: folders, processor and chat template, loading (HF, PEFT, merged, nnshift.load)."""

import json
import re

import pytest
import torch

import nnshift.zoo as zoo
from nnshift.errors import ZooError
from nnshift.zoo.build import NUM_IMAGE_TOKENS, build_processor, pixel_values
from nnshift.zoo.evaluate import generate_answers, vqa_correct
from nnshift.zoo.world import VOCABULARY, dataset


@pytest.fixture(scope="module")
def base():
    return zoo.load_hf("shapes-base")


def test_names_and_paths():
    assert zoo.names() == ["shapes-base", "shapes-colors", "shapes-places", "shapes-biased", "shapes-refusal"]
    assert zoo.path("shapes-base") == zoo.base_path("shapes-base") == zoo.base_path("shapes-colors")
    assert zoo.adapter_path("shapes-base") is None
    for name in ("shapes-colors", "shapes-places", "shapes-biased", "shapes-refusal"):
        ad = zoo.path(name)
        assert ad == zoo.adapter_path(name) and ad.name == name
        assert (ad / "adapter_config.json").exists() and (ad / "adapter_model.safetensors").exists()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (zoo.base_path() / f).exists(), f
    manifest = json.loads((zoo.CHECKPOINTS / "zoo.json").read_text())
    assert set(manifest["models"]) == set(zoo.names())


def test_unknown_name_raises():
    for fn in (zoo.path, zoo.base_path, zoo.adapter_path, zoo.load, zoo.load_hf):
        with pytest.raises(ZooError) as e:
            fn("shapes-huge")
        assert "shapes-base" in e.value.hint


def test_missing_checkpoint_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "CHECKPOINTS", tmp_path)
    with pytest.raises(ZooError, match="missing") as e:
        zoo.base_path()
    assert "nnshift.zoo.train" in e.value.hint


def test_zoo_is_small():
    total = sum(f.stat().st_size for f in zoo.CHECKPOINTS.rglob("*") if f.is_file())
    assert total < 20 * 2**20, total


def test_processor_template_and_image_tokens(base):
    _, proc = base
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    text = proc.apply_chat_template(user, add_generation_prompt=True)
    assert text == "user: <image> describe the image assistant:"
    only_text = [{"role": "user", "content": [{"type": "text", "text": "is there a circle?"}]}]
    assert proc.apply_chat_template(only_text, add_generation_prompt=True) == "user: is there a circle? assistant:"
    s = dataset(2, seed=1)
    inputs = proc(images=[x.image for x in s], text=[text, text], return_tensors="pt")
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [NUM_IMAGE_TOKENS, NUM_IMAGE_TOKENS]
    assert inputs["input_ids"][0, 0] == proc.tokenizer.bos_token_id
    # the training fast path computes exactly what the processor does
    assert torch.allclose(inputs["pixel_values"], pixel_values([x.image for x in s]), atol=1e-5)
    # the saved processor equals a freshly built one
    fresh = build_processor()
    assert fresh.tokenizer.get_vocab() == proc.tokenizer.get_vocab()


def test_tokenizer_covers_the_world_and_decodes_cleanly(base):
    _, proc = base
    tok = proc.tokenizer
    assert set(VOCABULARY) <= set(tok.get_vocab())
    for s in dataset(20, "places", seed=3) + dataset(20, task="vqa", seed=3):
        ids = tok(s.answers[0], add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s.answers[0]
        assert tok.unk_token_id not in tok(s.prompt)["input_ids"]
    assert tok.decode(tok("Provide a one-sentence caption.")["input_ids"], skip_special_tokens=True) == (
        "provide a one - sentence caption."
    )


def test_base_answers_vqa_and_stops_with_eos(base):
    model, proc = base
    samples = dataset(24, task="vqa", seed=4242)
    out = generate_answers(model, proc, samples, max_new_tokens=6)
    assert sum(vqa_correct(s, o) for s, o in zip(samples, out, strict=True)) >= 21
    assert all(len(o.split()) == 1 for o in out)  # one word then eos


def test_text_only_prompt_generates(base):
    model, proc = base
    from nnshift.data import Sample

    out = generate_answers(model, proc, [Sample("t", "how many shapes are there?")], max_new_tokens=5)
    assert isinstance(out[0], str)


def test_adapters_change_the_caption_style(base):
    samples = dataset(12, seed=31337)
    base_caps = generate_answers(*base, samples)
    colors = generate_answers(*zoo.load_hf("shapes-colors"), samples)
    places = generate_answers(*zoo.load_hf("shapes-places"), samples)
    color_re = re.compile(r"\b(red|green|blue|yellow|purple|orange)\b")
    assert sum(bool(color_re.search(c)) for c in colors) > sum(bool(color_re.search(c)) for c in base_caps)
    assert sum(("grass" in c or "water" in c or "sky" in c or "sand" in c or "plain" in c) for c in places) >= 10


def test_peft_unmerged_equals_merged_and_merged_folder(tmp_path, base):
    s = dataset(3, seed=8)
    _, proc = base
    text = [
        proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": x.prompt}]}],
            add_generation_prompt=True,
        )
        for x in s
    ]
    inputs = proc(images=[x.image for x in s], text=text, return_tensors="pt", padding=True)
    unmerged, _ = zoo.load_hf("shapes-colors", merged=False)
    merged, _ = zoo.load_hf("shapes-colors", merged=True)
    from transformers import LlavaForConditionalGeneration

    folder = zoo.merged_path("shapes-colors", cache_dir=tmp_path)
    assert folder == zoo.merged_path("shapes-colors", cache_dir=tmp_path)  # cached
    from_folder = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    base_model, _ = base
    with torch.no_grad():
        a = unmerged(**inputs).logits
        b = merged(**inputs).logits
        c = from_folder(**inputs).logits
        d = base_model(**inputs).logits
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(b, c, atol=1e-4)
    assert not torch.allclose(b, d, atol=1e-2)  # the adapter does something


def test_load_goes_through_nnshift_models_load(monkeypatch):
    import nnshift.models as models

    calls = []
    monkeypatch.setattr(models, "load", lambda *a, **k: calls.append((a, k)) or "vlm", raising=False)
    assert zoo.load("shapes-base", dtype="float32") == "vlm"
    assert zoo.load("shapes-places") == "vlm"
    assert zoo.load("shapes-colors", merged=True) == "vlm"
    assert calls[0] == ((str(zoo.base_path()),), {"dtype": "float32"})
    assert calls[1] == ((str(zoo.base_path()),), {"lora": str(zoo.adapter_path("shapes-places"))})
    assert calls[2] == ((str(zoo.base_path()),), {"lora": str(zoo.adapter_path("shapes-colors")), "merge": True})


def test_real_nnshift_load_if_available():
    models = pytest.importorskip("nnshift.models")
    if not hasattr(models, "load"):
        pytest.skip("nnshift.models.load is not written yet")
    vlm = zoo.load("shapes-colors")
    assert vlm.n_layers == 4 and vlm.hidden_size == 128


def test_generate_stopping_early_is_silent():
    """Every row ends with </s> long before max_new_tokens: ns.generate must not pass on nnsight's cut-short warning."""
    import warnings

    import nnshift as ns

    vlm = zoo.load("shapes-base", dtype="float32")
    samples = dataset(4, task="vqa", answer_type="number", seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = ns.generate(vlm, samples, max_new_tokens=12, progress=False)
    assert answers == [s.answers[0] for s in samples]  # one digit each, then </s>
    assert not [w for w in caught if "was never reached" in str(w.message)]
