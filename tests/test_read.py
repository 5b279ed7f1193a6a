"""ns.read inside your own trace equals ns.capture: same rows, ids and values."""

from __future__ import annotations

import pytest
import torch

import nnshift as ns
from nnshift.errors import HiddenSizeMismatchError, PositionError
from nnshift.models.testing import build_tiny, tiny_image


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> ns.VLM:
    return ns.load(build_tiny("llava", tmp_path_factory.mktemp("llava")), dtype="float32")


@pytest.fixture(scope="module")
def samples() -> list[ns.Sample]:
    prompts = ["what color is the circle", "is there a square", "how many shapes"]
    out = [ns.Sample(id=f"s{i}", prompt=p, image=tiny_image(i)) for i, p in enumerate(prompts)]
    return [*out, ns.Sample(id="t", prompt="a text-only prompt that is longer")]


@pytest.mark.parametrize(("at", "reduce"), [("last_prompt", None), ("image", None), ("image", "mean"), ("all", "mean")])
def test_read_equals_capture(vlm: ns.VLM, samples: list[ns.Sample], at: str, reduce: str | None) -> None:
    with_images = [s for s in samples if s.image is not None] if at == "image" else samples
    inputs = vlm.prepare(with_images)
    with vlm.model.trace(dict(inputs)):
        h = ns.read(vlm, 1, at=at, inputs=inputs)
    got = ns.read_activations(h, with_images, vlm=vlm, layer=1, at=at, inputs=inputs, reduce=reduce)
    ref = ns.capture(vlm, with_images, layer=1, at=at, reduce=reduce, batch_size=len(with_images), progress=False)
    assert got.ids == ref.ids
    assert got.meta == ref.meta
    torch.testing.assert_close(got.tensor, ref.tensor, rtol=0, atol=1e-6)
    assert got.info["layer"] == ref.info["layer"] and got.info["selector"] == ref.info["selector"]
    assert [s.id for s in got.samples] == [i.split("#")[0] for i in got.ids]


def test_read_refuses_generation_selectors(vlm: ns.VLM, samples: list[ns.Sample]) -> None:
    inputs = vlm.prepare(samples)
    with pytest.raises(PositionError, match=r"ns\.capture"):
        ns.read(vlm, 1, at=ns.positions.token_of_interest("circle"), inputs=inputs)


def test_read_activations_checks_the_tensor(vlm: ns.VLM, samples: list[ns.Sample]) -> None:
    inputs = vlm.prepare(samples)
    with pytest.raises(HiddenSizeMismatchError):
        ns.read_activations(torch.zeros(3, vlm.hidden_size), samples, vlm=vlm, layer=1, inputs=inputs)


def test_several_image_invokes_are_refused_by_nnsight(vlm: ns.VLM, samples: list[ns.Sample]) -> None:
    """docs/capture.md: nnsight 0.8.1 cannot batch two prepared multimodal invokes; one batch is the way."""
    first, second = vlm.prepare(samples[:1]), vlm.prepare(samples[1:2])
    with pytest.raises(NotImplementedError, match="Can't batch these inputs"):  # noqa: SIM117
        with vlm.model.trace() as tracer:
            with tracer.invoke(**first):
                vlm.get_resid(1).save()
            with tracer.invoke(**second):
                vlm.get_resid(1).save()
