"""Input checks of the shift analysis: paired activations, two dictionaries, an assignment, α, shift vectors.

Every check raises an `nnshift.errors.NnshiftError` subclass with a hint, before any work is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.errors import ArgumentError, ConceptError, HiddenSizeMismatchError, NonFiniteError, PairingError
from nnshift.metrics import matrix, work_dtype
from nnshift.store import Activations, check_same_provenance

__all__ = [
    "ActsA",
    "ActsB",
    "ActsLike",
    "Grounder",
    "check_alpha",
    "check_assignment",
    "check_dictionaries",
    "check_vectors",
    "pair_matrices",
]

ActsLike = Activations | Float[Tensor, "m d"]
# the two sides of a pair get their own axis names, so that a mismatch reaches our PairingError
ActsA = Activations | Float[Tensor, "ma da"]
ActsB = Activations | Float[Tensor, "mb db"]
#: maps ``[K, D]`` concepts to one word list per concept (e.g. `nnshift.concepts.grounding.ground_text`)
Grounder = Callable[[Float[Tensor, "k d"]], list[list[str]]]

_PAIR_HINT = "pair them first with ns.pair(acts_a, acts_b), which keeps the common sample ids in one order"


def _check_ids(acts_a: ActsA, acts_b: ActsB, m: int) -> list[str]:
    """The common sample ids (``"0"…"M-1"`` for plain tensors); `PairingError` if both sides have different ids."""
    ids_a = acts_a.ids if isinstance(acts_a, Activations) else None
    ids_b = acts_b.ids if isinstance(acts_b, Activations) else None
    if ids_a is not None and ids_b is not None and list(ids_a) != list(ids_b):
        diff = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y)
        raise PairingError(
            f"acts_a and acts_b hold different samples or orders (row {diff}: {ids_a[diff]!r} vs {ids_b[diff]!r})",
            _PAIR_HINT,
        )
    return list(ids_a if ids_a is not None else ids_b if ids_b is not None else map(str, range(m)))


def pair_matrices(
    acts_a: ActsA, acts_b: ActsB, *, same_model_ok: bool = True
) -> tuple[Float[Tensor, "m d"], Float[Tensor, "m d"], list[str]]:
    """Check that ``acts_a`` and ``acts_b`` are paired, finite, of one hidden size; return them on a's device.

    Their provenance must agree (one layer and selector, `nnshift.store.check_same_provenance`); with
    ``same_model_ok=False`` two captures of one model (same weights and adapter) are refused as well.
    """
    check_same_provenance(acts_a, acts_b, same_model_ok=same_model_ok)
    a = matrix(acts_a, "acts_a (original model)", promote=False)
    b = matrix(acts_b, "acts_b (fine-tuned model)", promote=False)
    if a.shape[0] != b.shape[0]:
        raise PairingError(
            f"acts_a has {a.shape[0]} samples but acts_b has {b.shape[0]}: the shift needs the same samples in both",
            _PAIR_HINT,
        )
    if a.shape[1] != b.shape[1]:
        raise HiddenSizeMismatchError(
            f"acts_a has hidden size {a.shape[1]} but acts_b has {b.shape[1]}",
            "capture both models at the residual stream of language models with the same hidden size",
        )
    ids = _check_ids(acts_a, acts_b, a.shape[0])
    dtype = torch.promote_types(work_dtype(a), work_dtype(b))
    return a.to(dtype=dtype), b.to(device=a.device, dtype=dtype), ids


def check_dictionaries(
    u_a: Float[Tensor, "ka da"],
    u_b: Float[Tensor, "kb db"],
    dim: int,
    what: tuple[str, str] = ("dictionary_a", "dictionary_b"),
) -> None:
    """Same K in both dictionaries, and their hidden size equals the activations'."""
    if u_a.shape[0] != u_b.shape[0]:
        raise ConceptError(
            f"{what[0]} has K = {u_a.shape[0]} concepts but {what[1]} has K = {u_b.shape[0]}",
            "fit both dictionaries with the same k (the bijective matching needs as many concepts on each side)",
        )
    for name, u in zip(what, (u_a, u_b), strict=True):
        if u.shape[1] != dim:
            raise HiddenSizeMismatchError(
                f"{name} has hidden size {u.shape[1]} but the activations have {dim}",
                "fit each dictionary on activations captured at the same layer as the ones you analyse",
            )


def check_assignment(assignment: Tensor, m: int, k: int) -> Int[Tensor, " m"]:
    """A valid ``[M]`` integer assignment in ``[0, k)``, as int64."""
    if assignment.ndim != 1 or assignment.shape[0] != m:
        raise PairingError(
            f"assignment has shape {tuple(assignment.shape)} but there are {m} samples",
            "compute it with ns.shift.assign_samples(dictionary_a, acts_a)",
        )
    if assignment.is_floating_point() or assignment.is_complex():
        raise ConceptError("assignment must hold integer concept indices", "use assign_samples(dictionary_a, acts_a)")
    if m and (int(assignment.min()) < 0 or int(assignment.max()) >= k):
        raise ConceptError(
            f"assignment holds concept indices outside [0, {k})", "pass k = the number of concepts of dictionary_a"
        )
    return assignment.long()


def check_alpha(alpha: float | int) -> float:
    """A finite shift scale α, as a float."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ArgumentError(f"alpha must be a number, got {alpha!r}", "pass a finite scale, e.g. alpha=1.0")
    if not math.isfinite(alpha):
        raise NonFiniteError(f"alpha = {alpha} is not finite", "pass a finite scale, e.g. alpha=1.0")
    return float(alpha)


def check_vectors(vectors: Tensor, concepts: Tensor) -> None:
    """One ``[D]`` shift vector per concept: ``vectors`` has the shape of ``concepts``."""
    if vectors.shape != concepts.shape:
        raise HiddenSizeMismatchError(
            f"shift vectors of shape {tuple(vectors.shape)} for concepts of shape {tuple(concepts.shape)}",
            "pass one [D] shift vector per concept (ns.shift.shift_vectors, or the report's shift_vectors)",
        )
