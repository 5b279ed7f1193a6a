"""Tiny text-only causal LMs: Llama, Qwen2, GPT-2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.testing.common import (
    CHATML,
    PLAIN_CHAT,
    finish,
    llama_text,
    tiny_text,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]


def _build_llama(folder: Path, layers: int = 4, **_: Any) -> Path:
    """Tiny LlamaForCausalLM with a chat template."""
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer("llama", chat_template=PLAIN_CHAT)
    model = LlamaForCausalLM(llama_text(len(tok), layers=layers))
    return finish(model, tok, folder)


def _build_qwen2(folder: Path, layers: int = 3, **_: Any) -> Path:
    """Tiny Qwen2ForCausalLM (no BOS, ChatML end-of-turn token)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer("qwen2", ["<|im_start|>", "<|im_end|>"], chat_template=CHATML)
    cfg = Qwen2Config(**tiny_text(len(tok), layers))
    return finish(Qwen2ForCausalLM(cfg), tok, folder)


def _build_gpt2(folder: Path, layers: int = 3, **_: Any) -> Path:
    """Tiny GPT2LMHeadModel (no chat template: prompts are used as they are)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer("gpt2")
    eos = tok.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=layers, n_head=4, n_positions=256, bos_token_id=eos, eos_token_id=eos
    )
    return finish(GPT2LMHeadModel(cfg), tok, folder)


BUILDERS: dict[str, Callable[..., Path]] = {
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "gpt2": _build_gpt2,
}
MULTIMODAL: tuple[str, ...] = ()
