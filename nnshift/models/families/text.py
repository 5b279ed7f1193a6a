"""Text-only causal LMs: Llama-style (model.layers / model.norm) and GPT-2 (transformer.h / transformer.ln_f)."""

from __future__ import annotations

from typing import Any

from nnshift.models.adapter import ModelAdapter
from nnshift.models.registry import register_adapter

__all__ = ["LLAMA_LIKE", "GPT2"]


def _text_only(family: str, *architectures: str, **fields: Any) -> ModelAdapter:
    """Register a text-only causal LM adapter: not multimodal, task text-generation, its config is the text config."""
    return register_adapter(
        ModelAdapter(
            family=family,
            architectures=architectures,
            multimodal=False,
            task="text-generation",
            text_config=None,
            **fields,
        )
    )


LLAMA_LIKE = _text_only(
    "llama",
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
    layers="model.layers",
    final_norm="model.norm",
    end_of_turn_tokens=("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>"),
    notes="decoder-only LMs laid out like Llama; tested on Llama and Qwen2, the others are validated at load",
)

GPT2 = _text_only(
    "gpt2",
    "GPT2LMHeadModel",
    layers="transformer.h",
    final_norm="transformer.ln_f",
    shares_prompt_prefix=True,
    attention="attn",
)
