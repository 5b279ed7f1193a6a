"""Llama 3.2 Vision (MllamaForConditionalGeneration): image features enter the LM through cross-attention layers."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["MLLAMA"]

MLLAMA = register_adapter(
    ModelAdapter(
        family="mllama",
        architectures=("MllamaForConditionalGeneration",),
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_index", "image_token_id"),
        image_token="<|image|>",
        end_of_turn_tokens=("<|eot_id|>",),
        nested_images=True,
        notes="meta-llama/Llama-3.2-*-Vision-*; model.language_model.layers interleaves self-attention and cross-attention decoder layers, every one of them is a layer here (the residual stream is read and edited after each); one <|image|> token per image in the text, the image itself is attended to through cross-attention; on a text-only prompt transformers skips the cross-attention layers (they do not run), so they cannot be read or edited there",
    )
)
