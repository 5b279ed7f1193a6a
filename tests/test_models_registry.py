"""Registry and adapter declarations: supported names, registration rules, validation of paths, dtype parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnshift.errors import NnshiftError, UnsupportedModelError
from nnshift.models import ModelAdapter, register_adapter, registered_adapters, supported_architectures
from nnshift.models.adapter import chat_messages, resolve_module
from nnshift.models.loading import _torch_dtype
from nnshift.models.registry import adapter_for

REQUIRED = {
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Idefics2ForConditionalGeneration",
    "Idefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration",
    "Gemma3ForConditionalGeneration",
    "PaliGemmaForConditionalGeneration",
    "LlamaForCausalLM",
    "GPT2LMHeadModel",
}


def test_every_required_architecture_is_supported() -> None:
    names = supported_architectures()
    assert set(names) >= REQUIRED and names == sorted(names)
    for adapter in registered_adapters():
        assert adapter.layers and adapter.final_norm and adapter.unembed
        assert adapter.task == ("image-text-to-text" if adapter.multimodal else "text-generation")
        # no adapter may take its layers from a vision tower
        assert not any(k in adapter.layers for k in ("vision", "visual"))


def test_unknown_architecture_error_lists_supported_and_how_to_register() -> None:
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(["BertForMaskedLM"], what="bert-base")
    assert "bert-base" in str(err.value) and "BertForMaskedLM" in str(err.value)
    assert all(name in str(err.value) for name in REQUIRED)
    assert "register_adapter" in err.value.hint and "docs/models.md" in err.value.hint


def test_register_refuses_silent_overwrite() -> None:
    clash = ModelAdapter(family="x", architectures=("LlamaForCausalLM",), layers="a", final_norm="b")
    with pytest.raises(ValueError, match="already has adapter"):
        register_adapter(clash)
    assert adapter_for(["LlamaForCausalLM"]).family == "llama"
    with pytest.raises(TypeError):
        register_adapter({"layers": "model.layers"})  # type: ignore[arg-type]


def test_adapters_are_frozen_and_build_messages() -> None:
    adapter = adapter_for(["LlavaForConditionalGeneration"])
    with pytest.raises(AttributeError):
        adapter.layers = "x"  # type: ignore[misc]
    assert adapter.messages("hi", True) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}
    ]
    assert adapter.messages("hi", False) == chat_messages("hi", False)
    assert adapter_for(["GPT2LMHeadModel"]).messages("hi", False) == [{"role": "user", "content": "hi"}]


def test_resolve_module_paths() -> None:
    net = torch.nn.Module()
    net.body = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)])
    assert resolve_module(net, "body.1").out_features == 3
    assert resolve_module(net, "") is net
    with pytest.raises(AttributeError):
        resolve_module(net, "head")


def test_dtype_parsing() -> None:
    assert _torch_dtype("float32") is torch.float32
    assert _torch_dtype("bf16") is torch.bfloat16
    assert _torch_dtype(torch.float16) is torch.float16
    assert _torch_dtype("auto") == "auto" and _torch_dtype(None) is None
    with pytest.raises(NnshiftError, match="unknown dtype"):
        _torch_dtype("float33")


_OVERWRITE_FIRST = """
from nnshift.models import ModelAdapter, register_adapter, supported_architectures
from nnshift.models.registry import adapter_for
mine = ModelAdapter(family="mine", architectures=("LlavaForConditionalGeneration",), layers="a.b", final_norm="c")
register_adapter(mine, overwrite=True)  # before any lookup: the built-ins are not imported yet
assert adapter_for(["LlavaForConditionalGeneration"]) is mine
assert adapter_for(["GPT2LMHeadModel"]).family == "gpt2"
assert "Qwen2VLForConditionalGeneration" in supported_architectures()
print("OVERWRITE-OK")
"""


def test_overwrite_of_a_builtin_before_the_first_lookup() -> None:
    """Issue 12: overwrite=True before the built-ins were imported must win, and later lookups must work."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", _OVERWRITE_FIRST], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert "OVERWRITE-OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize(
    ("prefix", "family"),
    [
        ("Mllama", "mllama"),
        ("Gemma4", "gemma4"),
        ("Glm4v", "glm4v"),
        ("Glm4vMoe", "glm4v"),
        ("Glm46V", "glm4v"),
        ("Mistral3", "mistral3"),
        ("Molmo2", "molmo2"),
        ("Qwen3VL", "qwen3_vl"),
        ("InternVL", "internvl"),
        ("LlavaOnevision", "llava_onevision"),
        ("Gemma3n", "gemma3n"),
    ],
)
def test_adapters_match_default_size_models_on_meta(prefix: str, family: str) -> None:
    """Adapter paths checked on the default-size model built on the meta device (no weights, no processor)."""
    import transformers

    if prefix == "Gemma3n":
        pytest.importorskip("timm", reason="Gemma 3n's vision tower is a timm model")

    config = getattr(transformers, f"{prefix}Config")()
    with torch.device("meta"):
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    adapter = adapter_for([type(model).__name__])
    assert adapter.family == family
    n, d, vocab = adapter.validate(model)
    tcfg = adapter.text_config_of(config)
    assert (n, d, vocab) == (tcfg.num_hidden_layers, tcfg.hidden_size, tcfg.vocab_size)
    assert adapter.image_token_id(config, None) is not None


def test_pixtral_12b_layout_is_the_llava_family() -> None:
    """Pixtral-12B is a LlavaForConditionalGeneration with a Pixtral tower: the llava adapter's paths hold (meta)."""
    import transformers

    config = transformers.LlavaConfig(
        vision_config=transformers.PixtralVisionConfig(), text_config=transformers.MistralConfig(), image_token_index=10
    )
    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(config)
    adapter = adapter_for([type(model).__name__])
    assert adapter.family == "llava"
    assert adapter.validate(model) == (32, 4096, 32000)
    assert type(model.model.vision_tower).__name__ == "PixtralVisionModel"
