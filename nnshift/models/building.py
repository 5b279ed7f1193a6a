"""How `ns.load` builds models: dtype names, the HF model, the nnsight wrapper, quiet progress bars."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nnshift.errors import NnshiftError
from nnshift.models.adapter import ModelAdapter

__all__ = [
    "DTypeLike",
    "torch_dtype",
    "nnsight_class",
    "build_nnsight",
    "architectures_of",
    "unwrap_peft",
    "load_hf",
    "quiet_loading",
]

DTypeLike = str | torch.dtype | None


def torch_dtype(dtype: DTypeLike) -> torch.dtype | str | None:
    """Normalise "float32" / "bf16" / torch.dtype / "auto" / None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise NnshiftError(f"unknown dtype {dtype!r}", 'use "float32", "bfloat16", "float16", "auto" or a torch.dtype')
    return value


def nnsight_class(adapter: ModelAdapter) -> type:
    """`TransformersModel` for multimodal adapters, `LanguageModel` for text-only ones."""
    if adapter.multimodal:
        from nnsight.modeling.transformers import TransformersModel

        return TransformersModel
    from nnsight import LanguageModel

    return LanguageModel


def build_nnsight(cls: type, source: Any, *, source_name: str | None = None, **kwargs: Any) -> Any:
    """Construct the nnsight model, its preprocessors named explicitly, LanguageModel's deprecation warning silenced.

    transformers >= 5.23 lists each task's pipeline class as a dotted string in ``SUPPORTED_TASKS``; nnsight 0.8.1
    reads the class's ``_load_tokenizer`` flag off that string, gets nothing, and so hands the pipeline no tokenizer
    for a pre-built (or weightless) model ("Impossible to guess which tokenizer to use"). Naming the tokenizer's
    source here (the model's folder or hub id, what nnsight 0.8.1 passed itself on older transformers) avoids that.
    """
    if kwargs.get("tokenizer") is None and kwargs.get("processor") is None and source_name:
        kwargs["tokenizer"] = source_name
    kwargs = {k: v for k, v in kwargs.items() if not (k in ("tokenizer", "processor") and v is None)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LanguageModel is deprecated.*")
        return cls(source, **kwargs)


def architectures_of(model: nn.Module) -> list[str]:
    """The class name of an HF module, then the names in its config."""
    names = [type(model).__name__]
    names += list(getattr(getattr(model, "config", None), "architectures", None) or [])
    return names


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The base HF model under a peft PeftModel wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__name__.startswith("Peft"):
        return get_base()
    return model


def load_hf(name: str, task: str, **load_kwargs: Any) -> nn.Module:
    """The HF model at `name` through the task's auto class (what nnsight's pipeline would load)."""
    from transformers.pipelines import check_task

    auto = check_task(task)[1]["pt"][0]
    return auto.from_pretrained(name, **load_kwargs)


@contextlib.contextmanager
def quiet_loading(verbose: bool) -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bars inside the block unless `verbose` (state restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not verbose and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
