"""The generic adapter: inferred paths on image-text models with no registered adapter, validation, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnshift.errors import UnsupportedModelError
from nnshift.models import load
from nnshift.models.generic import GenericAdapter, infer_adapter
from nnshift.models.registry import supported_architectures
from nnshift.models.testing import build_tiny

GENERIC = {"deepseek_vl": "DeepseekVLForConditionalGeneration", "video_llava": "VideoLlavaForConditionalGeneration"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generic")
    return {arch: build_tiny(arch, root / arch, vision_layers=4, text_layers=3) for arch in GENERIC}


@pytest.mark.parametrize("arch", list(GENERIC))
def test_generic_adapter_infers_and_warns_once(arch: str, folders: dict[str, Path]) -> None:
    from nnshift.models import generic

    assert GENERIC[arch] not in supported_architectures()
    generic._WARNED.discard(GENERIC[arch])
    with pytest.warns(UserWarning, match="generic adapter inferred layers='model.language_model.layers'"):
        vlm = load(folders[arch])
    assert isinstance(vlm.adapter, GenericAdapter) and vlm.adapter.family == f"generic:{GENERIC[arch]}"
    assert (vlm.adapter.final_norm, vlm.adapter.unembed) == ("model.language_model.norm", "lm_head")
    assert vlm.n_layers == 3 and vlm.hidden_size == 32 and vlm.image_token_id == vlm.hf.config.image_token_id
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(folders[arch])  # the second load says nothing


def test_generic_adapter_says_what_it_could_not_find(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForImageTextToText

    from nnshift.models import generic

    hf = AutoModelForImageTextToText.from_pretrained(folders["deepseek_vl"])
    hf.config.text_config.num_hidden_layers = 7  # no ModuleList has 7 layers
    with pytest.raises(UnsupportedModelError, match="a ModuleList of 7 decoder layers") as err:
        infer_adapter(hf)
    assert "register_adapter" in err.value.hint
    hf.config.text_config.num_hidden_layers = 3
    monkeypatch.setattr(generic, "_IMAGE_ATTRS", ("no_such_attribute",))  # and no processor given
    with pytest.raises(UnsupportedModelError, match="the image-token id"):
        infer_adapter(hf)


def test_text_only_models_still_need_an_adapter() -> None:
    from nnshift.models.generic import adapter_for

    with pytest.raises(UnsupportedModelError, match="OPTForCausalLM"):
        adapter_for(["OPTForCausalLM"], config=object())


def test_generic_adapter_validation_compares_hooks_with_output_hidden_states(folders: dict[str, Path]) -> None:
    """A wrong final norm (same size, another module) passes the path checks but fails the forward comparison."""
    import dataclasses

    from transformers import AutoModelForImageTextToText

    from nnshift.errors import AdapterValidationError

    hf = AutoModelForImageTextToText.from_pretrained(folders["deepseek_vl"])
    good = infer_adapter(hf)
    assert good.validate(hf) == (3, 32, hf.lm_head.out_features)
    decoy = "model.language_model.layers.0.input_layernorm"
    with torch.no_grad():  # random-init RMSNorms all have unit weights: make the decoy differ from the final norm
        hf.get_submodule(decoy).weight.mul_(2.0)
    bad = dataclasses.replace(good, final_norm=decoy)
    with pytest.raises(AdapterValidationError, match="block 2's output differs from output_hidden_states"):
        bad.validate(hf)
