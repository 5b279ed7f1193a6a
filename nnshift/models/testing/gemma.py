"""Tiny Gemma-family image-text models: Gemma 3 and PaliGemma."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.testing.common import (
    content,
    finish,
    siglip_vision,
    tiny_text,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]

_GEMMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else"
    " message['role'] }}\n" + content("<start_of_image>") + "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma_text(vocab: int, layers: int) -> dict[str, Any]:
    """Tiny Gemma-family text config fields."""
    return tiny_text(vocab, layers, head_dim=8)


def _build_gemma3(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Gemma3 image-text model: SigLIP 32x32/8 -> 16 patches pooled to 4 soft image tokens."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    tok = tiny_tokenizer(
        "gemma",
        specials,
        attributes={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=_GEMMA_CHAT, image_seq_length=4)
    text = Gemma3TextConfig(**_gemma_text(len(tok), text_layers), sliding_window=64)
    cfg = Gemma3Config(
        text_config=text,
        vision_config=siglip_vision(vision_layers),
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return finish(Gemma3ForConditionalGeneration(cfg), tok, folder, proc)


def _build_paligemma(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny PaliGemma: SigLIP 32x32/8 -> 16 image tokens prefixed to the prompt, Gemma decoder."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    tok = tiny_tokenizer("gemma", ["<image>"], attributes={"image_token": "<image>"})
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=siglip_vision(vision_layers),
        text_config=GemmaConfig(**_gemma_text(len(tok), text_layers)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32,
        hidden_size=32,
    )
    return finish(PaliGemmaForConditionalGeneration(cfg), tok, folder, proc)


_GEMMA4_CHAT = (
    "{{ bos_token }}{% for message in messages %}<|turn>{{ 'model' if message['role'] == 'assistant' else"
    " message['role'] }}\n" + content("<|image|>") + "<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)


def _build_gemma4(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Gemma 4 image-text model: 32x32 images, patch 8, 2x2 pooling, at most 70 soft image tokens (the smallest setting); no audio tower."""
    import transformers

    from nnshift.models.processors import image_only_processor

    specials = ["<|image>", "<image|>", "<|image|>", "<|turn>", "<turn|>", "<|audio>", "<audio|>", "<|audio|>"]
    names = {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>"}
    # transformers 5.22's Gemma4Processor refuses a tokenizer without audio tokens, even for images only
    names |= {"boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"}
    tok = tiny_tokenizer("gemma", specials, attributes=names)
    ip = transformers.Gemma4ImageProcessorPil(patch_size=8, pooling_kernel_size=2, max_soft_tokens=70)
    proc = image_only_processor(
        transformers.Gemma4Processor,
        ip,
        tok,
        feature_extractor=transformers.Gemma4AudioFeatureExtractor(),
        chat_template=_GEMMA4_CHAT,
        image_seq_length=70,
    )
    vision = transformers.Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        patch_size=8,
        pooling_kernel_size=2,
        position_embedding_size=64,
    )
    text = transformers.Gemma4TextConfig(
        **_gemma_text(len(tok), text_layers),
        sliding_window=64,
        layer_types=["sliding_attention"] * (text_layers - 1) + ["full_attention"],
        vocab_size_per_layer_input=len(tok),
        hidden_size_per_layer_input=8,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    cfg = transformers.Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        boi_token_id=ids["<|image>"],
        eoi_token_id=ids["<image|>"],
        image_token_id=ids["<|image|>"],
        video_token_id=len(tok) - 1,
    )
    return finish(transformers.Gemma4ForConditionalGeneration(cfg), tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {
    "gemma3": _build_gemma3,
    "paligemma": _build_paligemma,
    "gemma4": _build_gemma4,
}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
