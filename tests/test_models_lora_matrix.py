"""Adapter-loading matrix: LoRA adapters as training scripts ship them load exactly as `PeftModel.from_pretrained` does.

Families LLaVA and Qwen2-VL x adapters whose ``target_modules`` is a plain list or a regex that also matches
vision-tower layers (with weights for the language model only), adapters with ``modules_to_save`` (the projector),
and the older transformers key layout (language model at ``language_model.model`` / ``model.layers``) with and
without ``modules_to_save``. Reference: PEFT's own loading of the same weights in the current layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nnshift.data import Sample
from nnshift.models import VLM, load
from nnshift.models.testing import build_tiny, tiny_image

# per family: extra vision-tower layer names a plain list also hits, the projector, new -> old key prefixes
FAMILIES = {
    "llava": {
        "vision_targets": [],  # CLIP's q_proj / v_proj already share the language model's names
        "projector": "multi_modal_projector",
        "old": [
            ("base_model.model.model.language_model.", "base_model.model.language_model.model."),
            ("base_model.model.model.vision_tower.", "base_model.model.vision_tower."),
            ("base_model.model.model.multi_modal_projector.", "base_model.model.multi_modal_projector."),
            ("base_model.model.lm_head.", "base_model.model.language_model.lm_head."),
        ],
    },
    "qwen2_vl": {
        "vision_targets": ["qkv"],
        "projector": "merger",
        "old": [
            ("base_model.model.model.language_model.", "base_model.model.model."),
            ("base_model.model.model.visual.", "base_model.model.visual."),
        ],
    },
}
VARIANTS = ["list", "regex", "modules_to_save", "old_layout", "old_layout_modules_to_save"]
LM_ONLY = r".*language_model.*\.(q_proj|v_proj)"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    arch = request.param
    return arch, build_tiny(arch, tmp_path_factory.mktemp(arch) / "base", vision_layers=2, text_layers=2)


def _auto() -> type:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def make_adapter(arch: str, base: Path, variant: str, out: Path) -> tuple[Path, Path]:
    """(the adapter as shipped, the same weights saved by PEFT in today's layout) for one matrix cell."""
    from peft import LoraConfig, get_peft_model

    spec = FAMILIES[arch]
    torch.manual_seed(0)
    extra = {"modules_to_save": [spec["projector"]]} if variant.endswith("modules_to_save") else {}
    peft_model = get_peft_model(
        _auto().from_pretrained(base), LoraConfig(r=4, lora_alpha=4, target_modules=LM_ONLY, **extra)
    )
    with torch.no_grad():  # a trained-looking adapter: LoRA B and the projector copy moved away from the base
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.3)
    twin = out / "today"
    peft_model.save_pretrained(twin)
    shipped = out / "shipped"
    peft_model.save_pretrained(shipped)
    config = json.loads((shipped / "adapter_config.json").read_text())
    names = ["q_proj", "v_proj", *spec["vision_targets"]]
    if variant == "regex":
        config["target_modules"] = r".*\.(" + "|".join(names) + ")"  # also matches the vision tower's layers
    elif variant != "modules_to_save":
        config["target_modules"] = names  # a plain list: also matches the vision tower's layers
    (shipped / "adapter_config.json").write_text(json.dumps(config))
    if variant.startswith("old_layout"):
        state = load_file(shipped / "adapter_model.safetensors")
        renamed = {}
        for key, value in state.items():
            for new, old in spec["old"]:
                if key.startswith(new):
                    key = old + key[len(new) :]
                    break
            renamed[key] = value
        assert set(renamed) != set(state)
        save_file(renamed, shipped / "adapter_model.safetensors", metadata={"format": "pt"})
    return shipped, twin


def logits_of(vlm: VLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with vlm.model.trace(**inputs):
        out = vlm.model.output.logits.save()
    return out


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")  # from the direct PEFT reference
@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_loads_as_peft_does(family: tuple[str, Path], variant: str, tmp_path: Path) -> None:
    from peft import PeftModel

    arch, base = family
    shipped, twin = make_adapter(arch, base, variant, tmp_path)
    vlm = load(base, lora=shipped)
    samples = [Sample(id="i", prompt="what color", image=tiny_image(3)), Sample(id="t", prompt="how many cats")]
    inputs = vlm.prepare(samples)
    with torch.no_grad():
        reference = PeftModel.from_pretrained(_auto().from_pretrained(base), str(twin))(**inputs).logits
        bare = _auto().from_pretrained(base)(**inputs).logits
    ours = logits_of(vlm, inputs)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert (reference - bare).abs().max() > 1e-2  # the adapter does change the model
    with vlm.lora_disabled():
        assert torch.equal(logits_of(vlm, inputs), bare)  # projector copy and LoRA layers both switched off
    if not variant.startswith("old_layout"):
        with torch.no_grad():  # PEFT reads the shipped folder itself the same way
            direct = PeftModel.from_pretrained(_auto().from_pretrained(base), str(shipped))(**inputs).logits
        torch.testing.assert_close(ours, direct, rtol=0, atol=1e-5)


def test_vision_layers_matched_by_the_list_stay_unchanged(family: tuple[str, Path], tmp_path: Path) -> None:
    """A list that also names vision-tower layers: those get LoRA layers with no weights, i.e. unchanged (as PEFT)."""
    arch, base = family
    shipped, _ = make_adapter(arch, base, "list", tmp_path)
    vlm = load(base, lora=shipped)
    from peft.tuners.lora import LoraLayer

    vision = [n for n, m in vlm.hf.named_modules() if isinstance(m, LoraLayer) and "language_model" not in n]
    assert vision  # the list did reach the vision tower
    for n, m in vlm.hf.named_modules():
        if isinstance(m, LoraLayer) and "language_model" not in n:
            assert all(torch.count_nonzero(b.weight) == 0 for b in m.lora_B.values())


def test_merge_with_modules_to_save(family: tuple[str, Path], tmp_path: Path) -> None:
    arch, base = family
    shipped, _ = make_adapter(arch, base, "old_layout_modules_to_save", tmp_path)
    tuned = load(base, lora=shipped)
    merged = load(base, lora=shipped, merge=True)
    inputs = tuned.prepare([Sample(id="i", prompt="what color", image=tiny_image(4))])
    torch.testing.assert_close(logits_of(merged, inputs), logits_of(tuned, inputs), rtol=1e-4, atol=1e-5)
    assert not merged.lora_enabled
