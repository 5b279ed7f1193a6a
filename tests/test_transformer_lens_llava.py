"""TransformerLens 4.x TransformerBridge on the zoo's LLaVA: same logits as nnsight, patched and not; cache -> Activations."""

from __future__ import annotations

import warnings

import pytest
import torch

import nnshift as ns

warnings.filterwarnings("ignore")
tl_bridge = pytest.importorskip("transformer_lens.model_bridge")


@pytest.fixture(scope="module")
def models() -> tuple[ns.VLM, object]:
    vlm = ns.zoo.load("shapes-base", dtype="float32")
    bridge = tl_bridge.TransformerBridge.boot_transformers(
        str(ns.zoo.base_path("shapes-base")), device="cpu", dtype=torch.float32
    )
    bridge.eval()
    return vlm, bridge


@pytest.fixture(scope="module")
def batch(models: tuple[ns.VLM, object]) -> tuple[list[ns.Sample], dict[str, torch.Tensor]]:
    samples = ns.zoo.dataset(4, task="vqa", seed=5)
    return samples, models[0].prepare(samples)


def _nnsight_logits(vlm: ns.VLM, inputs: dict[str, torch.Tensor], patch: object = None) -> torch.Tensor:
    with vlm.model.trace(dict(inputs)):
        if patch is not None:
            patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    return logits


def _bridge_logits(bridge: object, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return bridge(
            inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            return_type="logits",
        )


def _real(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits at non-padding positions (what a padded position holds is each library's own business)."""
    return logits[inputs["attention_mask"].bool()]


def test_bridge_loads_the_zoo_llava_with_nnsight_logits(models, batch) -> None:
    vlm, bridge = models
    _, inputs = batch
    got, want = _bridge_logits(bridge, inputs), _nnsight_logits(vlm, inputs)
    torch.testing.assert_close(_real(got, inputs), _real(want, inputs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("positions", ["all", "last_prompt", "image"])
def test_patched_bridge_logits_equal_nnsight(models, batch, positions: str) -> None:
    vlm, bridge = models
    samples, inputs = batch
    acts = ns.capture(vlm, samples, layer=2, at="last_prompt", progress=False)
    vec = ns.steering.SteeringVector(acts.tensor[0] - acts.tensor[1], layer=2)
    patch = vec.patch(alpha=2.0, positions=positions)
    want = _nnsight_logits(vlm, inputs, patch)
    assert (want - _nnsight_logits(vlm, inputs)).abs().max() > 1e-3  # the patch does something
    image_mask = vlm.image_token_mask(inputs["input_ids"])
    with patch.hooked(bridge, attention_mask=inputs["attention_mask"], image_mask=image_mask):
        got = _bridge_logits(bridge, inputs)
    torch.testing.assert_close(_real(got, inputs), _real(want, inputs), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("at", "reduce"), [("last_prompt", None), ("image", "mean")])
def test_run_with_cache_into_activations_equals_capture(models, batch, at: str, reduce: str | None) -> None:
    vlm, bridge = models
    samples, inputs = batch
    with torch.no_grad():
        _, cache = bridge.run_with_cache(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
    got = ns.cache_activations(cache, samples, vlm=vlm, layer=-1, at=at, inputs=inputs, reduce=reduce)
    ref = ns.capture(vlm, samples, layer=-1, at=at, reduce=reduce, progress=False)
    assert got.ids == ref.ids
    torch.testing.assert_close(got.tensor, ref.tensor, rtol=0, atol=1e-4)
    assert got.info["source"] == "transformer_lens cache"
