"""Idefics2, Idefics3 and SmolVLM: SigLIP tower + connector; the LM is model.text_model; turns end with <end_of_utterance>."""

from __future__ import annotations

from typing import Any

from nnshift.models.families._common import ID_ONLY, builtin

__all__ = ["IDEFICS2", "IDEFICS3"]

#: both generations: the LM is model.text_model, <image> tokens, turns end with <end_of_utterance>
_SHARED: dict[str, Any] = {
    "lm": "model.text_model",
    "image_token_id_attrs": ID_ONLY,
    "image_token": "<image>",
    "end_of_turn_tokens": ("<end_of_utterance>",),
    "nested_images": True,
}

IDEFICS2 = builtin(
    "idefics2",
    "Idefics2ForConditionalGeneration",
    **_SHARED,
    shares_prompt_prefix=True,
    notes="HuggingFaceM4/idefics2-8b; image tokens are the perceiver latents, wrapped in <fake_token_around_image>",
)

IDEFICS3 = builtin(
    "idefics3",
    "Idefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration",
    **_SHARED,
    shares_prompt_prefix=True,
    notes="HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-*; pixel-shuffle connector",
)
