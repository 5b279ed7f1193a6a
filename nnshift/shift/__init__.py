"""Fine-tuning representation shift: concept shift vectors, shifted concepts, matching, recovery, dynamics.

Notation (see docs/shift.md): ``a_m`` / ``b_m`` are the original / fine-tuned model's representations of sample m,
``U^a`` / ``U^b`` their concept dictionaries (``[K, D]``), ``A_k`` the samples assigned to original concept k,
``δ_m = b_m − a_m``, ``Δ_k = mean_{m∈A_k} δ_m`` and ``u^s_k = u^a_k + α Δ_k``.

The package: `checks` (input checks), `metrics` (the paper's metrics, dynamics, α sweep), `report` (`ShiftReport`
and its save / load) and `analyze` (the whole analysis, in stages). Measurements shared with the concepts and
steering code (cosines, assignment, most-activating samples, T-Overlap) live in `nnshift.metrics`.
"""

from __future__ import annotations

from nnshift.metrics import (
    ConceptDictionaryLike,
    assign_samples,
    cosine_matrix,
    keyword_overlap,
    most_activating,
    text_overlap,
)
from nnshift.shift.analyze import analyze
from nnshift.shift.metrics import (
    AlphaSweep,
    DynamicsThresholds,
    alpha_sweep,
    classify_dynamics,
    consistency,
    correlation,
    magnitude,
    mas_overlap,
    match_concepts,
    mean_sample_shift,
    recovery,
    shift_vectors,
    shifted_concepts,
)
from nnshift.shift.report import _TENSORS as _TENSORS  # the saved tensor fields (read by tests)
from nnshift.shift.report import _WORDS as _WORDS
from nnshift.shift.report import FORMAT_VERSION as FORMAT_VERSION
from nnshift.shift.report import ShiftReport

__all__ = [
    "AlphaSweep",
    "ConceptDictionaryLike",
    "DynamicsThresholds",
    "ShiftReport",
    "alpha_sweep",
    "analyze",
    "assign_samples",
    "classify_dynamics",
    "consistency",
    "correlation",
    "cosine_matrix",
    "keyword_overlap",
    "magnitude",
    "mas_overlap",
    "match_concepts",
    "mean_sample_shift",
    "most_activating",
    "recovery",
    "shift_vectors",
    "shifted_concepts",
    "text_overlap",
]
