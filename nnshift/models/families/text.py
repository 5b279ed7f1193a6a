"""Text-only causal LMs: Llama-style (model.layers / model.norm) and GPT-2 (transformer.h / transformer.ln_f)."""

from __future__ import annotations

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["LLAMA_LIKE", "GPT2"]

LLAMA_LIKE = register_adapter(
    ModelAdapter(
        family="llama",
        architectures=(
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "GemmaForCausalLM",
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
            "Phi3ForCausalLM",
            "OlmoForCausalLM",
            "Olmo2ForCausalLM",
        ),
        layers="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        multimodal=False,
        task="text-generation",
        text_config=None,
        end_of_turn_tokens=("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>"),
        notes="decoder-only LMs laid out like Llama; tested on Llama and Qwen2, the others are validated at load",
    )
)

GPT2 = register_adapter(
    ModelAdapter(
        family="gpt2",
        architectures=("GPT2LMHeadModel",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        multimodal=False,
        task="text-generation",
        text_config=None,
    )
)
