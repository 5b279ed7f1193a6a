"""Llama 3.2 Vision (MllamaForConditionalGeneration): image features enter the LM through cross-attention layers."""

from __future__ import annotations

from nnshift.models.families._common import INDEX_FIRST, builtin

__all__ = ["MLLAMA"]

MLLAMA = builtin(
    "mllama",
    "MllamaForConditionalGeneration",
    image_token_id_attrs=INDEX_FIRST,
    image_token="<|image|>",
    end_of_turn_tokens=("<|eot_id|>",),
    nested_images=True,
    notes="meta-llama/Llama-3.2-*-Vision-*; model.language_model.layers interleaves self-attention and cross-attention decoder layers, every one of them is a layer here (the residual stream is read and edited after each); one <|image|> token per image in the text, the image itself is attended to through cross-attention; on a text-only prompt transformers skips the cross-attention layers (they do not run), so they cannot be read or edited there",
)
