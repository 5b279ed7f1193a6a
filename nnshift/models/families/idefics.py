"""Idefics2, Idefics3 and SmolVLM: SigLIP tower + connector; the LM is model.text_model; turns end with <end_of_utterance>."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["IDEFICS2", "IDEFICS3"]

IDEFICS2 = register_adapter(
    ModelAdapter(
        family="idefics2",
        architectures=("Idefics2ForConditionalGeneration",),
        layers="model.text_model.layers",
        final_norm="model.text_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<image>",
        end_of_turn_tokens=("<end_of_utterance>",),
        nested_images=True,
        notes="HuggingFaceM4/idefics2-8b; image tokens are the perceiver latents, wrapped in <fake_token_around_image>",
    )
)

IDEFICS3 = register_adapter(
    ModelAdapter(
        family="idefics3",
        architectures=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
        layers="model.text_model.layers",
        final_norm="model.text_model.norm",
        unembed="lm_head",
        image_token_id_attrs=("image_token_id",),
        image_token="<image>",
        end_of_turn_tokens=("<end_of_utterance>",),
        nested_images=True,
        notes="HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-*; pixel-shuffle connector",
    )
)
