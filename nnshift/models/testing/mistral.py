"""Tiny Mistral 3 (Pixtral vision encoder + patch merger + Mistral LM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnshift.models.testing.common import content, finish, tiny_tokenizer

__all__ = ["BUILDERS", "MULTIMODAL"]

_MISTRAL_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    + content("[IMG]")
    + "[/INST]{% else %}"
    + content("")
    + "</s>{% endif %}{% endfor %}"
)


def _build_mistral3(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Mistral3: 32x32 images, Pixtral patches of 8, 2x2 merge -> 2 rows of 2 [IMG] tokens + breaks + end."""
    import transformers

    specials = ["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"]
    tok = tiny_tokenizer("llama", specials, chat_template=_MISTRAL_CHAT)
    ip = transformers.PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8})
    proc = transformers.PixtralProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, spatial_merge_size=2, chat_template=_MISTRAL_CHAT
    )
    vision = transformers.PixtralVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = {
        "model_type": "mistral",
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": text_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
    }
    cfg = transformers.Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return finish(transformers.Mistral3ForConditionalGeneration(cfg), tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {"mistral3": _build_mistral3}
MULTIMODAL: tuple[str, ...] = ("mistral3",)
