"""The embedded "shapes" world: procedural images with known ground truth, captions, VQA and tiny trained LLaVAs.

``names()`` lists the shipped models; ``load(name)`` loads one through ``nnshift.load`` (the same path as a real
LLaVA); ``path(name)`` / ``base_path(name)`` / ``adapter_path(name)`` give their folders; ``dataset(...)`` draws
samples; ``load_hf(name)`` gives the plain transformers (+ PEFT) model and processor. Every public name of
`nnshift.zoo.world` (scenes, captions, VQA, writers) is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nnshift.errors import ZooError
from nnshift.zoo import world
from nnshift.zoo.world import *  # noqa: F403 (the shapes world: its scenes, captions, VQA and writers)

__all__ = [
    "CHECKPOINTS",
    "names",
    "path",
    "base_path",
    "adapter_path",
    "merged_path",
    "load",
    "load_hf",
]
__all__ += world.__all__

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
_MODELS: dict[str, str | None] = {
    "shapes-base": None,
    "shapes-colors": "shapes-colors",
    "shapes-places": "shapes-places",
    "shapes-biased": "shapes-biased",
    "shapes-refusal": "shapes-refusal",
}
_TRAIN_HINT = "reinstall nnshift, or rebuild the zoo with `python -m nnshift.zoo.train`"


def names() -> list[str]:
    """The shipped model names: shapes-base, shapes-colors, shapes-places, shapes-biased, shapes-refusal."""
    return list(_MODELS)


def _check(name: str) -> None:
    """Raise ZooError for an unknown name."""
    if name not in _MODELS:
        raise ZooError(f"unknown zoo model {name!r}", f"use one of {names()}")


def _existing(folder: Path, what: str) -> Path:
    """``folder`` if it holds weights, else ZooError."""
    if not any(folder.glob("*.safetensors")):
        raise ZooError(f"the {what} checkpoint is missing: no weights in {folder}", _TRAIN_HINT)
    return folder


def base_path(name: str = "shapes-base") -> Path:
    """The folder of the full model ``name`` is built on (the shapes-base folder, for every zoo model)."""
    _check(name)
    return _existing(CHECKPOINTS / "shapes-base", "shapes-base")


def adapter_path(name: str) -> Path | None:
    """The LoRA adapter folder of a fine-tuned model (PEFT format), None for shapes-base."""
    _check(name)
    adapter = _MODELS[name]
    return None if adapter is None else _existing(CHECKPOINTS / adapter, name)


def path(name: str) -> Path:
    """The folder of ``name``: the full model folder for shapes-base, the LoRA adapter folder for a fine-tune."""
    _check(name)
    adapter = adapter_path(name)
    return base_path(name) if adapter is None else adapter


def _cache_root() -> Path:
    """Where merged fine-tunes are written: $NNSHIFT_CACHE or ~/.cache/nnshift."""
    return Path(os.environ.get("NNSHIFT_CACHE", Path.home() / ".cache" / "nnshift")) / "zoo"


def merged_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """A full-model folder for ``name`` with its adapter merged in (written once to a cache, keyed by the weights)."""
    adapter = adapter_path(name)
    base = base_path(name)
    if adapter is None:
        return base
    digest = hashlib.sha256()
    for f in sorted([*base.glob("*.safetensors"), *adapter.glob("*")]):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / f"{name}-merged-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    model, processor = load_hf(name, merged=True)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        staging = Path(tmp) / "model"
        model.config.name_or_path = f"{name}-merged"
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "zoo_merged.json").write_text(json.dumps({"name": name, "base": str(base), "adapter": str(adapter)}))
        try:
            os.replace(staging, target)
        except OSError:  # another process wrote it first
            if not (target / "config.json").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
    return target


def load(name: str, merged: bool = False, *, lora: str | Path | None = None, **kwargs: Any) -> Any:
    """Load a zoo model with ``nnshift.load``: shapes-base as is, a fine-tune as base + LoRA (merged if asked).

    ``lora`` puts your own PEFT adapter on shapes-base (a fine-tune already carries its adapter: refused);
    every other keyword (``dtype``, ``device_map``, ...) goes to ``nnshift.load``. ``merged_path(name)`` gives a
    full-model folder with the adapter merged in, for tools that want a folder.
    """
    _check(name)
    from nnshift.models import load as _load

    adapter = adapter_path(name)
    if lora is not None and adapter is not None:
        raise ZooError(
            f"{name} is shapes-base with its own LoRA adapter; a second adapter ({lora}) cannot be stacked on it",
            f"load shapes-base with lora={str(lora)!r}, or load {name} without lora=",
        )
    if lora is not None:
        adapter = Path(lora)
    if adapter is None:
        return _load(str(base_path(name)), **kwargs)
    if merged:
        return _load(str(base_path(name)), lora=str(adapter), merge=True, **kwargs)
    return _load(str(base_path(name)), lora=str(adapter), **kwargs)


def load_hf(name: str, merged: bool = True) -> tuple[Any, Any]:
    """Plain Hugging Face objects: (LlavaForConditionalGeneration or PeftModel, LlavaProcessor), in eval mode."""
    from nnshift.zoo.build import quiet_transformers

    quiet_transformers()
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    base = base_path(name)
    processor = AutoProcessor.from_pretrained(base)
    model: Any = LlavaForConditionalGeneration.from_pretrained(base, dtype="float32")
    adapter = adapter_path(name)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merged:
            model = model.merge_and_unload()
    model.eval()
    return model, processor
