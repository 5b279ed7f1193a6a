"""Tiny Llama 3.2 Vision (Mllama): a tiled ViT whose features enter the LM through cross-attention layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nnshift.models.testing.common import content, finish, tiny_tokenizer

__all__ = ["BUILDERS", "MULTIMODAL"]

_MLLAMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    + content("<|image|>")
    + "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _build_mllama(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Mllama: one 32x32 tile, patch 8; decoder layer 1 is a cross-attention layer; one <|image|> per image."""
    import transformers

    specials = ["<|image|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = tiny_tokenizer("llama", specials, chat_template=_MLLAMA_CHAT)
    ip = transformers.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=1)
    proc = transformers.MllamaProcessor(image_processor=ip, tokenizer=tok, chat_template=_MLLAMA_CHAT)
    vision = transformers.MllamaVisionConfig(
        hidden_size=16,
        num_hidden_layers=vision_layers,
        num_global_layers=1,
        attention_heads=2,
        intermediate_size=32,
        vision_output_dim=32,
        image_size=32,
        patch_size=8,
        max_num_tiles=1,
        intermediate_layers_indices=[0],
        supported_aspect_ratios=[[1, 1]],
    )
    text = transformers.MllamaTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        cross_attention_layers=[1],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = transformers.MllamaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>")
    )
    model = transformers.MllamaForConditionalGeneration(cfg)
    with torch.no_grad():  # the cross-attention gates start at 0 (tanh(0) = 0): open them so the image counts
        for layer in model.model.language_model.layers:
            for name in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):
                if hasattr(layer, name):
                    getattr(layer, name).fill_(1.0)
    return finish(model, tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {"mllama": _build_mllama}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
