"""Tiny LLaVA-family models: LLaVA-1.5 and LLaVA-NeXT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import (
    CHATML,
    LLAVA_CHAT,
    clip_vision,
    finish,
    llama_text,
    siglip_vision,
    tiny_text,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]

ONEVISION_CHAT = CHATML.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")


def _build_llava(folder: Path, vision_layers: int = 6, text_layers: int = 2, **_: Any) -> Path:
    """Tiny LLaVA-1.5: CLIP tower (deeper than the LM by default) + Llama; 16 image tokens per image."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer("llama", ["<image>"])
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT,
    )
    cfg = LlavaConfig(
        vision_config=clip_vision(vision_layers),
        text_config=llama_text(len(tok), layers=text_layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return finish(LlavaForConditionalGeneration(cfg), tok, folder, proc)


def _build_llava_next(folder: Path, vision_layers: int = 3, text_layers: int = 2, **_: Any) -> Path:
    """Tiny LLaVA-NeXT (any-resolution tiling over a 32x32 CLIP tower) + Llama."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    pinpoints = [[32, 32], [32, 64], [64, 32]]
    tok = tiny_tokenizer("llama", ["<image>"])
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT,
    )
    cfg = LlavaNextConfig(
        vision_config=clip_vision(vision_layers),
        text_config=llama_text(len(tok), layers=text_layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return finish(LlavaNextForConditionalGeneration(cfg), tok, folder, proc)


def _qwen2_text(vocab: int, layers: int) -> dict[str, Any]:
    """A tiny Qwen2 text config, as a dict."""
    return tiny_text(vocab, layers, model_type="qwen2")


def _build_llava_onevision(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny LLaVA-OneVision: SigLIP 32x32/8 any-resolution tiles + Qwen2 (ChatML)."""
    import transformers

    pinpoints = [[32, 32], [32, 64], [64, 32]]
    tok = tiny_tokenizer("qwen2", ["<|im_start|>", "<|im_end|>", "<image>", "<video>"], chat_template=ONEVISION_CHAT)
    ip = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints, do_pad=True
    )
    proc = image_only_processor(
        transformers.LlavaOnevisionProcessor,
        ip,
        tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT,
    )
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=siglip_vision(vision_layers),
        text_config=_qwen2_text(len(tok), text_layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    return finish(transformers.LlavaOnevisionForConditionalGeneration(cfg), tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "llava_onevision": _build_llava_onevision,
}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
