"""Tiny Qwen-VL models: Qwen2-VL and Qwen2.5-VL."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import (
    CHATML,
    finish,
    merging_vision,
    mrope_parameters,
    tiny_text,
    tiny_tokenizer,
)

__all__ = ["BUILDERS", "MULTIMODAL"]

_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_text(vocab: int, layers: int) -> dict[str, Any]:
    """Tiny Qwen2-VL text config (head_dim 8, M-RoPE sections 1+1+2)."""
    return tiny_text(vocab, layers, rope_parameters=mrope_parameters(), bos_token_id=None)


def _build_qwen_vl(folder: Path, version: str, vision_layers: int = 2, text_layers: int = 2) -> Path:
    """Tiny Qwen2-VL or Qwen2.5-VL: 56x56 images -> 4x4 patches of 14 -> 4 merged image tokens."""
    import transformers

    tok = tiny_tokenizer("qwen2", _QWEN_SPECIALS, chat_template=CHATML)
    ip = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    tokens = _qwen3_tokens(tok)
    vision: dict[str, Any]
    cfg: transformers.PreTrainedConfig
    model: transformers.PreTrainedModel
    if version == "2":
        vision = {
            "depth": vision_layers,
            "embed_dim": 16,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        cfg = transformers.Qwen2VLConfig(text_config=_qwen_text(len(tok), text_layers), vision_config=vision, **tokens)
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
        proc = image_only_processor(transformers.Qwen2VLProcessor, ip, tok, chat_template=CHATML)
    else:
        vision = merging_vision(vision_layers, 14, window_size=56, fullatt_block_indexes=[vision_layers - 1])
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=_qwen_text(len(tok), text_layers), vision_config=vision, **tokens
        )
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
        proc = image_only_processor(transformers.Qwen2_5_VLProcessor, ip, tok, chat_template=CHATML)
    return finish(model, tok, folder, proc)


def _qwen3_tokens(tok: Any) -> dict[str, Any]:
    """The placeholder token ids of a Qwen-VL config."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _build_qwen3_vl(folder: Path, moe: bool = False, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Qwen3-VL (or its MoE variant): 64x64 images -> 4x4 patches of 16 -> 4 merged tokens; deepstack at layer 0."""
    import transformers

    tok = tiny_tokenizer("qwen2", _QWEN_SPECIALS, chat_template=CHATML)
    ip = transformers.Qwen2VLImageProcessorPil(
        min_pixels=64 * 64, max_pixels=64 * 64, patch_size=16, merge_size=2, temporal_patch_size=2
    )
    vision = merging_vision(vision_layers, 16, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text = _qwen_text(len(tok), text_layers)
    text.update(head_dim=8, rope_parameters={**text["rope_parameters"], "mrope_interleaved": True})
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
    prefix = "Qwen3VLMoe" if moe else "Qwen3VL"
    cfg = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, **_qwen3_tokens(tok))
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg)
    proc = image_only_processor(transformers.Qwen3VLProcessor, ip, tok, chat_template=CHATML)
    return finish(model, tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_vl": partial(_build_qwen_vl, version="2"),
    "qwen2_5_vl": partial(_build_qwen_vl, version="2.5"),
    "qwen3_vl": _build_qwen3_vl,
    "qwen3_vl_moe": partial(_build_qwen3_vl, moe=True),
}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
