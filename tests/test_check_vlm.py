"""Something that is not a loaded model as ``vlm``: an ArgumentError with a hint, before any work.

The entry points are called unwrapped (as users call them: the tests' type hook would catch the wrong type first).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import nnshift as ns
from nnshift.errors import ArgumentError
from nnshift.models.protocol import MEMBERS, LensLike, VLMLike, check_vlm, missing_members
from nnshift.models.testing import build_tiny

SAMPLES = [ns.Sample(id="s0", prompt="what color is the circle"), ns.Sample(id="s1", prompt="is there a square")]


class Partial:
    """A stand-in with only some of the members (what a wrapper that forgot to forward looks like)."""

    model = None
    name = "partial"
    hidden_size = 8
    n_layers = 2


def _vector() -> ns.steering.SteeringVector:
    return ns.steering.SteeringVector(torch.ones(8), 1, "coarse", {})


def _inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}


CALLS = {
    "capture": lambda vlm, tmp: ns.capture(vlm, SAMPLES, layer=1, out=tmp / "store", progress=False),
    "generate": lambda vlm, tmp: ns.generate(vlm, SAMPLES, progress=False),
    "steer": lambda vlm, tmp: ns.steer(vlm, SAMPLES, _vector().patch(1.0), progress=False),
    "read": lambda vlm, tmp: ns.read(vlm, 1, inputs=_inputs()),
    "read_activations": lambda vlm, tmp: ns.read_activations(
        torch.zeros(2, 8), SAMPLES, vlm=vlm, layer=1, inputs=_inputs()
    ),
    "cache_activations": lambda vlm, tmp: ns.cache_activations(
        {"blocks.1.hook_resid_post": torch.zeros(2, 4, 8)}, SAMPLES, vlm=vlm, layer=1, inputs=_inputs()
    ),
    "by_impact": lambda vlm, tmp: ns.steering.by_impact(vlm, SAMPLES, [_vector()], progress=False),
}


@pytest.fixture(autouse=True)
def _unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry points without the tests' type-checking wrapper."""
    for mod, name in [(ns, n) for n in ("capture", "generate", "steer", "read", "read_activations")] + [
        (ns, "cache_activations"),
        (ns.steering, "by_impact"),
    ]:
        monkeypatch.setattr(mod, name, inspect.unwrap(getattr(mod, name)))


@pytest.mark.parametrize("entry", sorted(CALLS))
@pytest.mark.parametrize("vlm", [None, "llava-hf/llava-1.5-7b-hf", Partial()], ids=["none", "str", "partial"])
def test_not_a_model_is_an_argument_error(entry, vlm, tmp_path):
    with pytest.raises(ArgumentError) as exc:
        CALLS[entry](vlm, tmp_path)
    msg = str(exc.value)
    assert f"{entry}() needs a loaded model as vlm, got {type(vlm).__name__}" in msg
    assert "ns.load(" in exc.value.hint and "ns.zoo.load(" in exc.value.hint
    assert not (tmp_path / "store").exists()  # before any work: capture made no store


def test_missing_members_names_what_a_stand_in_lacks():
    assert missing_members(Partial()) == [m for m in MEMBERS if m not in ("model", "name", "hidden_size", "n_layers")]
    assert missing_members(None) == list(MEMBERS)
    with pytest.raises(ArgumentError, match=r"has no tokenizer, device, dtype, layer_index, \.\.\.\)"):
        check_vlm(Partial(), "capture()")


def test_members_are_the_protocols():
    """MEMBERS lists exactly VLMLike's members (so the check and the protocol cannot drift apart)."""
    own = {n for n in vars(VLMLike) if not n.startswith("_")} | set(VLMLike.__annotations__)
    assert set(MEMBERS) == own


def test_a_loaded_model_passes_without_running_properties(tmp_path):
    vlm = ns.load(build_tiny("llava", tmp_path / "llava"), dtype="float32")
    assert missing_members(vlm) == []
    assert check_vlm(vlm, "generate()") is vlm
    assert isinstance(vlm, VLMLike) and isinstance(vlm, LensLike)
    assert not isinstance(Partial(), LensLike)


def test_token_batch():
    from nnshift.errors import EmptyInputError
    from nnshift.models.protocol import token_batch

    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    got_ids, got_mask = token_batch({"input_ids": ids, "attention_mask": mask, "pixel_values": torch.zeros(2, 3)})
    assert got_ids is ids and got_mask is mask
    assert torch.equal(token_batch({"input_ids": ids})[1], torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(EmptyInputError, match="input_ids"):
        token_batch({"attention_mask": mask})
