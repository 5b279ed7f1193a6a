"""Patch.save / load (and PatchSet): the round trip steers identically; binding from the trace's own inputs."""

import json
import warnings

import pytest
import torch
from conftest import PROMPTS

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import CorruptStoreError, DataFormatError, PositionError
from nnshift.models import load
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.steering import Patch, PatchSet, SteeringVector, steer
from nnshift.steering.patch_io import PATCH_FORMAT, selector_from_spec

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load(build_tiny("llava", tmp_path_factory.mktemp("llava")), dtype="float32")


def _vec(d, layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g) * 2, layer=layer, method="coarse", info={"name": f"v{seed}"})


def _logits(vlm, batch, patch=None, own=False):
    """Logits of a trace over ``batch``; the patch bound with ``inputs=batch``, or (own) to the trace's own inputs."""
    with vlm.model.trace(dict(batch)):
        if patch is not None and own:
            patch(vlm)
        elif patch is not None:
            patch(vlm, inputs=batch)
        out = vlm.model.output.logits.save()
    return out


# ---------------------------------------------------------------------------- save / load


def test_patch_round_trip_steers_identically(llama, samples, tmp_path):
    patch = _vec(llama.hidden_size, 1, seed=2).patch(torch.tensor([1.5, -0.5, 2.0]), P.last_prompt() | P.generated())
    path = patch.save(tmp_path / "p")
    doc = json.loads((path / "patch.json").read_text())
    assert doc["format"] == PATCH_FORMAT and doc["format_version"] == 2 and doc["doc"]["kind"] == "Patch"
    assert doc["doc"]["provenance"]["nnshift"] == ns.__version__ and "torch" in doc["doc"]["provenance"]
    back = Patch.load(path)
    assert back.spec() == patch.spec() and torch.equal(back.vector.vector, patch.vector.vector)
    assert back.vector.method == "coarse" and back.vector.info == {"name": "v2"}
    assert torch.equal(back.alpha, patch.alpha) and back.rows is None
    got = steer(llama, samples, back, max_new_tokens=5, progress=False)
    assert got == steer(llama, samples, patch, max_new_tokens=5, progress=False)
    assert got != ns.generate(llama, samples, max_new_tokens=5, progress=False)


def test_patchset_round_trip_steers_identically(llama, samples, tmp_path):
    d = llama.hidden_size
    ps = _vec(d, 1, seed=1).patch(0.5, "generated", rows=[True, False, True]) + Patch(
        torch.randn(d, generator=torch.Generator().manual_seed(9)), 1.25, "prompt", layer=3
    )
    path = ps.save(tmp_path / "ps")
    back = PatchSet.load(path)
    assert isinstance(back, PatchSet) and len(back) == 2 and back.spec() == ps.spec()
    assert torch.equal(back.patches[0].rows, torch.tensor([1.0, 0.0, 1.0]))
    inputs = llama.prepare(samples)
    assert torch.equal(_logits(llama, inputs, back), _logits(llama, inputs, ps))
    assert steer(llama, samples, back, 5, progress=False) == steer(llama, samples, ps, 5, progress=False)
    with pytest.raises(DataFormatError, match=r"PatchSet\.load") as info:
        Patch.load(path)
    assert info.value.hint
    single = PatchSet.load(ps.patches[1].save(tmp_path / "one"))
    assert len(single) == 1 and single.spec() == [ps.patches[1].spec()]


def test_every_selector_spec_round_trips():
    for sel in (
        P.all(),
        P.prompt(),
        P.last_prompt(),
        P.generated(),
        P.generated(reduce="mean"),
        P.image(),
        P.text(),
        P.token_of_interest("dog", variants=True),
        P.image() | P.generated(),
    ):
        assert selector_from_spec(sel.spec()) == sel


def test_bad_saved_patches_are_clear_errors(llama, tmp_path):
    with pytest.raises(CorruptStoreError):
        Patch.load(tmp_path / "missing")
    path = _vec(llama.hidden_size, 1).patch().save(tmp_path / "p")
    doc = json.loads((path / "patch.json").read_text())
    for change, exc in (({"format": "other"}, DataFormatError), ({"format_version": 99}, DataFormatError)):
        (path / "patch.json").write_text(json.dumps({**doc, **change}))
        with pytest.raises(exc) as info:
            Patch.load(path)
        assert info.value.hint
    (path / "patch.json").write_text(json.dumps({**doc, "patches": [{"layer": 1}]}))
    with pytest.raises(CorruptStoreError):
        Patch.load(path)
    (path / "patch.json").write_text("{not json")
    with pytest.raises(CorruptStoreError):
        Patch.load(path)


# ---------------------------------------------------------------------------- binding from the trace's own inputs


def test_patch_binds_to_the_traces_own_inputs(llama, samples):
    inputs = llama.prepare(samples)
    assert (inputs["attention_mask"] == 0).any(), "padded rows make shape-based binding differ"
    patch = _vec(llama.hidden_size, 1, seed=4).patch(1.5, "all")
    bound = _logits(llama, inputs, patch)
    assert torch.equal(_logits(llama, inputs, patch, own=True), bound)  # trace(inputs): no inputs= needed
    with llama.model.trace(**inputs):  # trace(**inputs) too
        patch(llama)
        kw = llama.model.output.logits.save()
    assert torch.equal(kw, bound)
    shape_only = patch.bind(llama)  # the fallback without inputs edits padding too
    with llama.model.trace(dict(inputs)):
        shape_only.apply(llama, 0)
        lazy = llama.model.output.logits.save()
    assert not torch.equal(lazy, bound)


def test_generation_binds_to_its_own_inputs(llama, samples):
    inputs = llama.prepare(samples)
    patch = _vec(llama.hidden_size, 2, seed=6).patch(2.0, "all")
    with llama.model.generate(dict(inputs), max_new_tokens=5, do_sample=False, pad_token_id=llama.pad_token_id) as tr:
        patch(llama)
        ids = tr.result.save()
    plen = inputs["input_ids"].shape[1]
    answers = [llama.decode(ns.generation.trim_answer(r.tolist(), llama.eos_token_ids)) for r in ids[:, plen:]]
    assert answers == steer(llama, samples, patch, max_new_tokens=5, progress=False)


def test_image_positions_bind_without_inputs(llava):
    samples = [ns.Sample(id=f"i{i}", prompt=p, image=tiny_image(i)) for i, p in enumerate(PROMPTS)]
    inputs = llava.prepare(samples)
    patch = _vec(llava.hidden_size, 0, seed=3).patch(1.0, "image")
    with pytest.raises(PositionError):
        patch.bind(llava)  # without inputs image positions cannot be resolved
    got = _logits(llava, inputs, patch, own=True)
    assert torch.equal(got, _logits(llava, inputs, patch))
    assert not torch.equal(got, _logits(llava, inputs))
