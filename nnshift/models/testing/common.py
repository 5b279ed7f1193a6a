"""Shared pieces of the tiny test models: a word list, BPE tokenizers, images, small vision configs, saving."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "WORDS",
    "CHATML",
    "PLAIN_CHAT",
    "LLAVA_CHAT",
    "content",
    "finish",
    "clip_vision",
    "llama_text",
    "merging_vision",
    "mrope_parameters",
    "quiet",
    "siglip_vision",
    "tiny_image",
    "tiny_text",
    "tiny_tokenizer",
]

_WORDS_TEXT = """a an the is are was what which who where how many much color colour of in on at to and or with this
that there here it its image picture photo show shows describe briefly question answer yes no one two three four five
six seven eight nine ten zero dog dogs cat cats bird car bus red blue green yellow black white orange purple brown pink
gray big small large circle square triangle shape shapes left right top bottom middle next man woman person people
table chair tree sky grass water street room sitting standing near above below do does can you see please word user
assistant system model USER ASSISTANT Assistant User 0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' " - ( ) / = + *"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS_TEXT.split()))

# Jinja fragment rendering one message's content; IMG is replaced by each family's image marker.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMG"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
)


def content(image_marker: str) -> str:
    """The content-rendering Jinja fragment with `image_marker` for image parts."""
    return _CONTENT.replace("IMG", image_marker)


def quiet() -> None:
    """Silence transformers' backend-fallback chatter while building."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


_TOKENIZER_CLASSES = {
    "llama": "LlamaTokenizer",
    "gemma": "GemmaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gpt2": "GPT2Tokenizer",
}


def _corpus() -> list[str]:
    """Training text for the tiny BPE tokenizers: every word, alone, after a space and after a newline."""
    words = list(WORDS)
    lines = [" ".join(words), " " + " ".join(words), "\n".join(words), "\n\n".join(words)]
    lines += ["what color is the dog ?\n", "how many cats are there ?\n", "describe the image briefly .\n"]
    return lines * 4


def tiny_tokenizer(
    kind: str = "llama",
    special: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    vocab_size: int = 512,
    add_bos: bool | None = None,
    attributes: dict[str, str] | None = None,
) -> Any:
    """A small BPE tokenizer of the given family's own class (llama, gemma, qwen2, gpt2), trained offline.

    Being an instance of the family's class, it reloads identically through AutoTokenizer. `special` tokens are
    added as special tokens; `attributes` sets named special-token attributes (e.g. ``image_token``).
    """
    import transformers

    cls = getattr(transformers, _TOKENIZER_CLASSES[kind])
    base = cls()
    tok = base.train_new_from_iterator(_corpus(), vocab_size=vocab_size, new_special_tokens=list(special))
    if kind in ("llama", "gemma"):
        tok.add_bos_token = True if add_bos is None else add_bos
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if attributes:
        # named model-specific special tokens (tok.image_token / tok.image_token_id), saved in tokenizer_config.json
        tok._set_model_specific_special_tokens(special_tokens=dict(attributes))
    tok.padding_side = "left"
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_image(seed: int = 0, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A random RGB PIL image (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def tiny_text(vocab: int, layers: int, **fields: Any) -> dict[str, Any]:
    """The sizes every tiny decoder shares (hidden 32, MLP 64, 4 heads, 2 KV heads, 512 positions), plus ``fields``."""
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **fields,
    }


def merging_vision(layers: int, patch: int, **fields: Any) -> dict[str, Any]:
    """A tiny Qwen-VL-style vision tower (width 16, 2 heads, 2x2 merging) whose merger outputs the LM's width 32."""
    return {
        "depth": layers,
        "hidden_size": 16,
        "intermediate_size": 32,
        "out_hidden_size": 32,
        "num_heads": 2,
        "patch_size": patch,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        **fields,
    }


def mrope_parameters() -> dict[str, Any]:
    """A fresh M-RoPE ``rope_parameters`` dict for tiny Qwen-VL / GLM-4V text models (sections 1+1+2 of head_dim 8)."""
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}


def llama_text(vocab: int, layers: int = 2, **kw: Any) -> Any:
    """A tiny LlamaConfig."""
    from transformers import LlamaConfig

    return LlamaConfig(**tiny_text(vocab, layers, **kw))


def finish(model: Any, tok: Any, folder: Path, processor: Any = None) -> Path:
    """Set special-token ids on the configs, then save model + tokenizer/processor to `folder`."""
    for cfg in [model.config, getattr(model.config, "text_config", None), model.generation_config]:
        if cfg is None:
            continue
        cfg.pad_token_id = tok.pad_token_id
        cfg.eos_token_id = tok.eos_token_id
        cfg.bos_token_id = tok.bos_token_id
    model.generation_config.do_sample = False
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    else:
        tok.save_pretrained(folder)
    return folder


def siglip_vision(layers: int, image: int = 32, patch: int = 8, hidden: int = 16) -> Any:
    """A tiny SiglipVisionConfig."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
    )


def clip_vision(layers: int, image: int = 32, patch: int = 8) -> Any:
    """A tiny CLIPVisionConfig."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        projection_dim=16,
    )


PLAIN_CHAT = (
    "{% for message in messages %}{{ message['role'] }}: " + content("") + "\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + content("<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


LLAVA_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    + content("<image>\n")
    + "{% if message['role'] != 'user' %}</s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
