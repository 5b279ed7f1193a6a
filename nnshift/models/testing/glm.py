"""Tiny GLM-4.1V / GLM-4.5V (Glm4v, Glm4vMoe): a ViT with 2x2 merging + a GLM-4 LM with M-RoPE."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nnshift.models.processors import image_only_processor
from nnshift.models.testing.common import content, finish, merging_vision, mrope_parameters, tiny_text, tiny_tokenizer

__all__ = ["BUILDERS", "MULTIMODAL"]

_SPECIALS = ["<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|video|>"]
_SPECIALS += ["<|begin_of_video|>", "<|end_of_video|>", "<|endoftext|>"]
_GLM_CHAT = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    + content("<|begin_of_image|><|image|><|end_of_image|>")
    + "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _build_glm4v(folder: Path, moe: bool = False, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny GLM-4V (or its MoE variant): 56x56 images -> 4x4 patches of 14 -> 4 merged <|image|> tokens."""
    import transformers

    tok = tiny_tokenizer("qwen2", _SPECIALS, chat_template=_GLM_CHAT)
    ip = transformers.Glm4vImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIALS}
    vision = merging_vision(vision_layers, 14, image_size=56)
    text = tiny_text(len(tok), text_layers, rope_parameters=mrope_parameters())
    if moe:
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1)
        text.update(head_dim=8, n_shared_experts=1, n_group=1, topk_group=1, partial_rotary_factor=1.0)
    prefix = "Glm4vMoe" if moe else "Glm4v"
    cfg = getattr(transformers, f"{prefix}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg)
    proc = image_only_processor(transformers.Glm4vProcessor, ip, tok, chat_template=_GLM_CHAT)
    return finish(model, tok, folder, proc)


BUILDERS: dict[str, Callable[..., Path]] = {"glm4v": _build_glm4v, "glm4v_moe": partial(_build_glm4v, moe=True)}
MULTIMODAL: tuple[str, ...] = tuple(BUILDERS)
