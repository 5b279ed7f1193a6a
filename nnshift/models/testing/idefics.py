"""Tiny Idefics2, Idefics3 and SmolVLM models."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import (
    content,
    finish,
    llama_text,
    tiny_text,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]

_IDEFICS_CHAT = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    + content("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def _vision(layers: int) -> dict[str, Any]:
    """The tiny SigLIP-style tower of both Idefics generations: 32x32 images, patches of 8."""
    return {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }


def _build_idefics2(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Idefics2 (SigLIP-like tower + perceiver resampler with 4 latents + Mistral)."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    tok = tiny_tokenizer("llama", _IDEFICS_SPECIALS[:3])
    ip = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": 32, "longest_edge": 32})
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=_IDEFICS_CHAT)
    cfg = Idefics2Config(
        vision_config=_vision(vision_layers),
        perceiver_config={
            "hidden_act": "silu",
            "resampler_n_latents": 4,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
            "hidden_size": 32,
            "rms_norm_eps": 1e-6,
        },
        text_config=tiny_text(len(tok), text_layers, model_type="mistral"),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    return finish(Idefics2ForConditionalGeneration(cfg), tok, folder, proc)


def _build_idefics3(
    folder: Path, smolvlm: bool = False, vision_layers: int = 2, text_layers: int = 2, **_: Any
) -> Path:
    """Tiny Idefics3 (or SmolVLM): 32x32 images, patch 8, pixel-shuffle 2 -> 4 image tokens, no splitting."""
    import transformers

    tok = tiny_tokenizer("llama", _IDEFICS_SPECIALS)
    prefix = "SmolVLM" if smolvlm else "Idefics3"
    ip = getattr(transformers, f"{prefix}ImageProcessorPil")(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    if smolvlm:
        proc = image_only_processor(
            transformers.SmolVLMProcessor, ip, tok, image_seq_len=4, chat_template=_IDEFICS_CHAT
        )
    else:
        proc = transformers.Idefics3Processor(
            image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=_IDEFICS_CHAT
        )
    cfg = getattr(transformers, f"{prefix}Config")(
        vision_config=_vision(vision_layers),
        text_config=llama_text(len(tok), layers=text_layers).to_dict(),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg)
    return finish(model, tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {
    "idefics2": _build_idefics2,
    "idefics3": _build_idefics3,
    "smolvlm": partial(_build_idefics3, smolvlm=True),
}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
