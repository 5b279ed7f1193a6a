"""Adapters whose processor cannot be built here (Mistral 3, Molmo2: torchvision-only), checked on bare tiny models.

No processor means no `ns.load`; what can be checked is the model side: the adapter validates on a tiny random
model, and a forward's hooked block outputs equal ``output_hidden_states`` (the last after the adapter's final norm),
with image features in the input for Mistral 3.
"""

from __future__ import annotations

import pytest
import torch

from nnshift.models.generic import _check_forward
from nnshift.models.registry import adapter_for

TEXT_LAYERS = 3


def _hidden(extra: dict | None = None) -> dict:
    base = {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 256,
    }
    return base | (extra or {})


def _mistral3() -> torch.nn.Module:
    import transformers

    vision = transformers.PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = transformers.Mistral3Config(
        vision_config=vision, text_config={"model_type": "mistral", **_hidden()}, image_token_index=10
    )
    return transformers.Mistral3ForConditionalGeneration(cfg).eval()


def _molmo2() -> torch.nn.Module:
    import transformers

    text = transformers.Molmo2TextConfig(**_hidden({"additional_vocab_size": 8}))
    vision = transformers.Molmo2VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        image_size=[28, 28],
        patch_size=14,
    )
    adapter = transformers.Molmo2AdapterConfig(
        vision_feature_layer=[-1, -2],
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=32,
        text_hidden_size=32,
    )
    cfg = transformers.Molmo2Config(text_config=text, vision_config=vision, adapter_config=adapter, image_patch_id=90)
    return transformers.Molmo2ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize(("build", "family"), [(_mistral3, "mistral3"), (_molmo2, "molmo2")])
def test_adapter_paths_and_text_forward_on_a_bare_tiny_model(build, family: str) -> None:
    torch.manual_seed(0)
    hf = build()
    adapter = adapter_for([type(hf).__name__])
    assert adapter.family == family
    assert adapter.validate(hf)[:2] == (TEXT_LAYERS, 32)
    _check_forward(adapter, hf, TEXT_LAYERS)  # raises unless every hooked block output = output_hidden_states
    assert adapter.image_token_id(hf.config, None) is not None


def test_mistral3_image_forward_hooks_equal_output_hidden_states() -> None:
    """With a 32x32 image (patch 8, 2x2 merge: 4 image tokens), the middle and last block outputs match HF's own."""
    torch.manual_seed(0)
    hf = _mistral3()
    adapter = adapter_for([type(hf).__name__])
    ids = torch.tensor([[1, 5, 10, 10, 10, 10, 6, 7]])
    assert int((ids == adapter.image_token_id(hf.config, None)).sum()) == 4
    layers = hf.get_submodule(adapter.layers)
    seen: list[torch.Tensor] = []
    handles = [layers[i].register_forward_hook(lambda _m, _i, o: seen.append(o)) for i in (1, 2)]
    with torch.no_grad():
        out = hf(
            input_ids=ids,
            pixel_values=torch.rand(1, 3, 32, 32),
            image_sizes=torch.tensor([[32, 32]]),
            output_hidden_states=True,
        )
    for h in handles:
        h.remove()
    torch.testing.assert_close(seen[0], out.hidden_states[2])
    with torch.no_grad():
        torch.testing.assert_close(hf.get_submodule(adapter.final_norm)(seen[1]), out.hidden_states[3])
        plain = hf(input_ids=ids, output_hidden_states=True).hidden_states[2]  # the image tokens as text embeddings
    assert not torch.equal(plain, out.hidden_states[2])  # the image changed the residual stream
