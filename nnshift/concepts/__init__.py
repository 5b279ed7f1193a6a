"""Concept dictionaries: learn K concepts from activations (k-means, Semi-NMF, PCA, NMF), transform, ground.

``ns.concepts.fit(acts, k=20, method="kmeans", seed=0)`` returns a `ConceptDictionary`; see
docs/concepts.md for the methods' formulas and parameters.
"""

from __future__ import annotations

from nnshift.concepts.dictionary import ConceptDictionary
from nnshift.concepts.estimator import ConceptEstimator, fit
from nnshift.concepts.grounding import (
    TopSamples,
    dictionary_overlap,
    ground_text,
    overlap,
    plot_top_samples,
    t_overlap,
    top_samples,
)
from nnshift.concepts.methods import (
    ConceptMethod,
    FitResult,
    KMeansConfig,
    MethodConfig,
    NMFConfig,
    PCAConfig,
    SemiNMFConfig,
    SparseSemiNMFConfig,
    available_methods,
    get_method,
    register_method,
)

__all__ = [
    "ConceptDictionary",
    "ConceptEstimator",
    "ConceptMethod",
    "FitResult",
    "KMeansConfig",
    "MethodConfig",
    "NMFConfig",
    "PCAConfig",
    "SemiNMFConfig",
    "SparseSemiNMFConfig",
    "TopSamples",
    "available_methods",
    "dictionary_overlap",
    "fit",
    "get_method",
    "ground_text",
    "overlap",
    "plot_top_samples",
    "register_method",
    "t_overlap",
    "top_samples",
]
