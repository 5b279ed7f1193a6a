"""Tiny image-text models that have no registered adapter (DeepSeek-VL, Video-LLaVA): the generic adapter's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import (
    LLAVA_CHAT,
    clip_vision,
    content,
    finish,
    llama_text,
    siglip_vision,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]

_DEEPSEEK_CHAT = (
    "{% for message in messages %}{{ 'User: ' if message['role'] == 'user' else 'Assistant: ' }}"
    + content("<image_placeholder>")
    + "\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _build_deepseek_vl(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny DeepSeek-VL: SigLIP 32x32/8 -> 16 <image_placeholder> tokens + a Llama LM."""
    import transformers

    tok = tiny_tokenizer(
        "llama",
        ["<image_placeholder>"],
        chat_template=_DEEPSEEK_CHAT,
        attributes={"image_token": "<image_placeholder>"},
    )
    ip = transformers.DeepseekVLImageProcessorPil(size={"height": 32, "width": 32})
    proc = transformers.DeepseekVLProcessor(
        image_processor=ip, tokenizer=tok, num_image_tokens=16, chat_template=_DEEPSEEK_CHAT
    )
    cfg = transformers.DeepseekVLConfig(
        vision_config=siglip_vision(vision_layers).to_dict(),
        text_config=llama_text(len(tok), layers=text_layers).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return finish(transformers.DeepseekVLForConditionalGeneration(cfg), tok, folder, proc)


def _build_video_llava(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Video-LLaVA (image inputs only): CLIP 32x32/8 -> 16 <image> tokens + a Llama LM."""
    import transformers

    tok = tiny_tokenizer("llama", ["<image>", "<video>"], chat_template=LLAVA_CHAT)
    ip = transformers.VideoLlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = image_only_processor(
        transformers.VideoLlavaProcessor,
        ip,
        tok,
        patch_size=8,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT,
    )
    cfg = transformers.VideoLlavaConfig(
        vision_config=clip_vision(vision_layers).to_dict(),
        text_config=llama_text(len(tok), layers=text_layers).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    return finish(transformers.VideoLlavaForConditionalGeneration(cfg), tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {"deepseek_vl": _build_deepseek_vl, "video_llava": _build_video_llava}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
