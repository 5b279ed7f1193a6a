"""`VLMLike`: what nnshift's capture, steering, shift and evaluation code needs from a loaded model.

`nnshift.VLM` implements it; a stand-in (a wrapper, a test double) only has to provide these members.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from nnshift.data import Sample
from nnshift.errors import ArgumentError, EmptyInputError

__all__ = ["LensLike", "VLMLike", "check_vlm", "missing_members", "token_batch"]


@runtime_checkable
class LensLike(Protocol):
    """What text grounding needs from a model: its tokenizer and its logit lens (final norm, then unembedding).

    Every `VLMLike` is one; a stand-in for grounding alone only needs these two members.
    """

    tokenizer: Any

    def logit_lens(self, h: Float[Tensor, "k d"]) -> Float[Tensor, "k v"]: ...


@runtime_checkable
class VLMLike(Protocol):
    """A loaded model as nnshift uses it: an nnsight model plus the architecture facts of its adapter."""

    model: Any
    name: str
    tokenizer: Any

    @property
    def hidden_size(self) -> int: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def layer_index(self, i: int) -> int: ...

    def get_resid(self, i: int) -> Any: ...

    def set_resid(self, i: int, value: Any) -> None: ...

    def prepare(self, samples: Sequence[Sample], add_generation_prompt: bool = True) -> dict[str, Tensor]:
        """Model inputs: ``input_ids`` and ``attention_mask`` ``[B, S]`` (see `token_batch`), image tensors."""
        ...

    def image_token_mask(self, input_ids: Int[Tensor, "b s"]) -> Bool[Tensor, "b s"]: ...

    def logit_lens(self, h: Float[Tensor, "k d"]) -> Float[Tensor, "k v"]: ...

    def decode(self, ids: Int[Tensor, ...] | Sequence[int]) -> str: ...


#: the members of `VLMLike`, in its order
MEMBERS: tuple[str, ...] = (
    "model",
    "name",
    "tokenizer",
    "hidden_size",
    "n_layers",
    "device",
    "dtype",
    "layer_index",
    "get_resid",
    "set_resid",
    "prepare",
    "image_token_mask",
    "logit_lens",
    "decode",
)


def _has(obj: Any, name: str) -> bool:
    """``obj`` has ``name``, found without running a property (or, failing that, through ``__getattr__``)."""
    try:
        inspect.getattr_static(obj, name)
        return True
    except AttributeError:
        return hasattr(obj, name)


def missing_members(vlm: Any) -> list[str]:
    """The `VLMLike` members that ``vlm`` lacks (empty for a loaded `nnshift.VLM`)."""
    return [m for m in MEMBERS if not _has(vlm, m)]


def check_vlm(vlm: Any, what: str) -> VLMLike:
    """``vlm`` is a loaded model (has every `VLMLike` member), else `ArgumentError` naming what is missing."""
    missing = missing_members(vlm)
    if missing:
        lacks = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ArgumentError(
            f"{what} needs a loaded model as vlm, got {type(vlm).__name__} (it has no {lacks})",
            "load one with ns.load('org/model') or ns.zoo.load('shapes-base'), and pass it first",
        )
    return cast(VLMLike, vlm)


def token_batch(inputs: Mapping[str, Tensor]) -> tuple[Int[Tensor, "b s"], Shaped[Tensor, "b s"]]:
    """The ``[B, S]`` token ids of prepared inputs and their attention mask (all ones when there is none)."""
    if "input_ids" not in inputs:
        raise EmptyInputError("inputs has no 'input_ids'", "pass what vlm.prepare(samples) returned")
    ids = inputs["input_ids"]
    return ids, inputs.get("attention_mask", torch.ones_like(ids))
