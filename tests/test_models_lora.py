"""ns.load(base, lora=adapter): one copy of the weights, adapter switched on and off; merge=True."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnshift.data import Sample
from nnshift.errors import NnshiftError
from nnshift.models import VLM, load
from nnshift.models.testing import build_tiny, save_tiny_lora, tiny_image


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = build_tiny("llama", root / "base", layers=3)
    return base, save_tiny_lora(base, root / "adapter", scale=0.5)


@pytest.fixture(scope="module")
def tuned(llama: tuple[Path, Path]) -> VLM:
    base, adapter = llama
    return load(base, lora=adapter)


def run(vlm: VLM, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-layer residual, logits) in an nnsight trace."""
    with vlm.model.trace(**inputs):
        h = vlm.get_resid(-1).save()
        logits = vlm.model.output.logits.save()
    return h, logits


PROMPTS = [Sample(id="a", prompt="what color is the dog ?"), Sample(id="b", prompt="how many cats")]


def test_adapter_on_off_and_base_equality(tuned: VLM, llama: tuple[Path, Path]) -> None:
    from peft.tuners.lora import LoraLayer

    base = load(llama[0])
    assert tuned.lora == str(llama[1]) and tuned.lora_enabled
    # injected in place: the adapter's module paths are the base model's, projections became LoRA layers
    assert type(tuned.layer(0)._module) is type(base.layer(0)._module)
    assert isinstance(tuned.hf.model.layers[0].self_attn.q_proj, LoraLayer)
    assert not any(isinstance(m, LoraLayer) for m in base.hf.modules())
    inputs = tuned.prepare(PROMPTS)
    h_on, logits_on = run(tuned, inputs)
    with tuned.lora_disabled():
        assert not tuned.lora_enabled
        h_off, logits_off = run(tuned, inputs)
    assert tuned.lora_enabled  # restored
    h_base, logits_base = run(base, inputs)
    assert not torch.allclose(h_on, h_off)
    assert not torch.allclose(logits_on, logits_off)
    assert torch.equal(h_off, h_base) and torch.equal(logits_off, logits_base)
    tuned.lora_enabled = False
    assert torch.equal(run(tuned, inputs)[1], logits_base)
    tuned.lora_enabled = True
    assert torch.equal(run(tuned, inputs)[1], logits_on)


def test_generation_differs_with_the_adapter(tuned: VLM) -> None:
    inputs = tuned.prepare(PROMPTS)
    kw = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with tuned.model.generate(**inputs, **kw) as tracer:
        on = tracer.result.save()
    with tuned.lora_disabled(), tuned.model.generate(**inputs, **kw) as tracer:
        off = tracer.result.save()
    with torch.no_grad():
        ref_on = tuned.hf.generate(**inputs, **kw)
    assert torch.equal(on, ref_on)
    assert on.shape == off.shape and not torch.equal(on, off)


def test_merge_matches_the_adapter(tuned: VLM, llama: tuple[Path, Path]) -> None:
    from peft.tuners.lora import LoraLayer

    merged = load(llama[0], lora=llama[1], merge=True)
    assert not any(isinstance(m, LoraLayer) for m in merged.hf.modules())
    assert not merged.lora_enabled
    with pytest.raises(NnshiftError, match="merged"):
        merged.lora_enabled = False
    inputs = tuned.prepare(PROMPTS)
    torch.testing.assert_close(run(merged, inputs)[1], run(tuned, inputs)[1], rtol=1e-4, atol=1e-5)


def test_lora_on_a_hf_object_and_no_adapter_errors(llama: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(llama[0])
    vlm = load(hf, lora=llama[1])
    assert vlm.lora_enabled and vlm.hf is hf
    plain = load(llama[0])
    assert not plain.lora_enabled
    with pytest.raises(NnshiftError, match="no LoRA adapter"), plain.lora_disabled():
        pass


def test_lora_on_llava(tmp_path: Path) -> None:
    base = build_tiny("llava", tmp_path / "base", vision_layers=2, text_layers=2)
    adapter = save_tiny_lora(base, tmp_path / "adapter", target_modules=("q_proj", "v_proj"))
    vlm = load(base, lora=adapter)
    plain = load(base)
    inputs = vlm.prepare([Sample(id="i", prompt="what color", image=tiny_image(2))])
    with vlm.model.trace(**inputs):
        on = vlm.get_resid(-1).save()
    with vlm.lora_disabled(), vlm.model.trace(**inputs):
        off = vlm.get_resid(-1).save()
    with plain.model.trace(**inputs):
        ref = plain.get_resid(-1).save()
    assert not torch.allclose(on, off)
    assert torch.equal(off, ref)
