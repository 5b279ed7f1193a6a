"""Tiny random models of every supported family, built offline and saved with save_pretrained (for tests).

One builder module per family group (`text`, `llava`, `qwen`, `idefics`, `gemma`, `tiles`, `mllama`, `glm`,
`generic`); each exposes ``BUILDERS`` (arch name -> builder) and ``MULTIMODAL`` (its image-text arch names).
`build_tiny(arch, folder)` dispatches on the arch name. The `generic` group's architectures have no registered
adapter: they load through the generic adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nnshift.models.testing import gemma, generic, glm, idefics, llava, mllama, qwen, text, tiles
from nnshift.models.testing.common import WORDS, quiet, tiny_image, tiny_tokenizer

__all__ = [
    "ARCHES",
    "MULTIMODAL_ARCHES",
    "TEXT_ARCHES",
    "build_tiny",
    "cached_tiny",
    "tiny_tokenizer",
    "tiny_image",
    "save_tiny_lora",
    "WORDS",
]

_GROUPS = (llava, qwen, idefics, gemma, tiles, mllama, glm, generic, text)
_BUILDERS: dict[str, Callable[..., Path]] = {k: v for g in _GROUPS for k, v in g.BUILDERS.items()}

MULTIMODAL_ARCHES: tuple[str, ...] = tuple(a for g in _GROUPS for a in g.MULTIMODAL)
TEXT_ARCHES: tuple[str, ...] = tuple(text.BUILDERS)
ARCHES: tuple[str, ...] = MULTIMODAL_ARCHES + TEXT_ARCHES


def build_tiny(arch: str, folder: str | Path, *, seed: int = 0, **options: Any) -> Path:
    """Build a tiny random model of family `arch` (see `ARCHES`) and save it with its processor to `folder`."""
    if arch not in _BUILDERS:
        raise KeyError(f"unknown tiny arch {arch!r}; choose from {sorted(_BUILDERS)}")
    quiet()
    torch.manual_seed(seed)
    return _BUILDERS[arch](Path(folder), **options)


def save_tiny_lora(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.5,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> Path:
    """A random non-zero LoRA adapter for the tiny model at `model_dir` (causal LM or image-text), saved to `out_dir`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(model_dir))
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    base = auto.from_pretrained(str(model_dir))
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules))
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    return out


_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}


def cached_tiny(arch: str, **options: Any) -> Path:
    """`build_tiny` into a per-process temporary folder, built once per (arch, options) and reused."""
    import tempfile

    key = (arch, tuple(sorted(options.items())))
    if key not in _CACHE or not (_CACHE[key] / "config.json").exists():
        _CACHE[key] = build_tiny(arch, Path(tempfile.mkdtemp(prefix=f"nnshift-tiny-{arch}-")) / arch, **options)
    return _CACHE[key]
