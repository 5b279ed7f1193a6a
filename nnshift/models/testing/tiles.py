"""Tiny InternVL and Aya Vision: both tile images with the GOT-OCR2 image processor (one 32x32 tile here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import CHATML, finish, siglip_vision, tiny_text, tiny_tokenizer

__all__ = ["BUILDERS", "MULTIMODAL"]

_INTERNVL_CHAT = CHATML.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
_AYA_CHAT = (
    "{{ bos_token }}{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ '<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def _text(model_type: str, vocab: int, layers: int) -> dict[str, Any]:
    """A tiny decoder config of `model_type`, as a dict."""
    return tiny_text(vocab, layers, model_type=model_type, head_dim=8)


def _got_ocr2_processor() -> Any:
    """The GOT-OCR2 image processor at one 32x32 tile (no cropping into patches)."""
    import transformers

    return transformers.GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=False, min_patches=1, max_patches=1
    )


def _build_internvl(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny InternVL: InternViT 32x32/8 -> 16 patches, pixel shuffle 0.5 -> 4 <IMG_CONTEXT> tokens; Qwen2 LM."""
    import transformers

    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    names = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tok = tiny_tokenizer("qwen2", specials, chat_template=_INTERNVL_CHAT, attributes=names)
    proc = image_only_processor(
        transformers.InternVLProcessor, _got_ocr2_processor(), tok, image_seq_length=4, chat_template=_INTERNVL_CHAT
    )
    vision = transformers.InternVLVisionConfig(
        hidden_size=16,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=(32, 32),
        patch_size=(8, 8),
    )
    cfg = transformers.InternVLConfig(
        vision_config=vision,
        text_config=_text("qwen2", len(tok), text_layers),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return finish(transformers.InternVLForConditionalGeneration(cfg), tok, folder, proc)


def _build_aya_vision(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Aya Vision: SigLIP 32x32/8 -> 16 patches, downsample 2 -> 4 <|IMG_PATCH|> tokens; Cohere 2 LM."""
    import transformers

    specials = ["<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
    specials += ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"]
    tok = tiny_tokenizer("llama", specials, chat_template=_AYA_CHAT)
    proc = transformers.AyaVisionProcessor(
        image_processor=_got_ocr2_processor(),
        tokenizer=tok,
        patch_size=8,
        img_size=32,
        downsample_factor=2,
        chat_template=_AYA_CHAT,
    )
    text = _text("cohere2", len(tok), text_layers)
    text.update(sliding_window=64, layer_types=["sliding_attention"] * (text_layers - 1) + ["full_attention"])
    cfg = transformers.AyaVisionConfig(
        vision_config=siglip_vision(vision_layers),
        text_config=text,
        downsample_factor=2,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        tie_word_embeddings=False,
    )
    return finish(transformers.AyaVisionForConditionalGeneration(cfg), tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {"internvl": _build_internvl, "aya_vision": _build_aya_vision}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
