"""`VLMLike`: what nnshift's capture, steering, shift and evaluation code needs from a loaded model.

`nnshift.VLM` implements it; a stand-in (a wrapper, a test double) only has to provide these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nnshift.data import Sample

__all__ = ["VLMLike"]


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

    def prepare(self, samples: Sequence[Sample], add_generation_prompt: bool = True) -> dict[str, Tensor]: ...

    def image_token_mask(self, input_ids: Int[Tensor, "b s"]) -> Bool[Tensor, "b s"]: ...

    def logit_lens(self, h: Float[Tensor, "k d"]) -> Float[Tensor, "k v"]: ...

    def decode(self, ids: Tensor | Sequence[int]) -> str: ...
