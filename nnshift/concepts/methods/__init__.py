"""Concept-extraction methods (k-means, Semi-NMF, sparse Semi-NMF, PCA, NMF), their configs and registry.

One module per method (``kmeans``, ``semi_nmf``, ``pca``, ``nmf``) holds its frozen config dataclass
and its `ConceptMethod`; ``base`` holds the ABC, `FitResult` and the registry. New methods subclass
`ConceptMethod` and are added with `register_method`. Formulas: docs/concepts.md.
"""

from __future__ import annotations

from nnshift.concepts.methods.base import (
    ConceptMethod,
    FitResult,
    MethodConfig,
    available_methods,
    get_method,
    register_method,
)
from nnshift.concepts.methods.kmeans import KMeansConfig, KMeansMethod
from nnshift.concepts.methods.nmf import NMFConfig, NMFMethod
from nnshift.concepts.methods.pca import PCAConfig, PCAMethod
from nnshift.concepts.methods.semi_nmf import (
    SemiNMFConfig,
    SemiNMFMethod,
    SparseSemiNMFConfig,
    SparseSemiNMFMethod,
)

__all__ = [
    "ConceptMethod",
    "FitResult",
    "MethodConfig",
    "KMeansConfig",
    "KMeansMethod",
    "SemiNMFConfig",
    "SemiNMFMethod",
    "SparseSemiNMFConfig",
    "SparseSemiNMFMethod",
    "PCAConfig",
    "PCAMethod",
    "NMFConfig",
    "NMFMethod",
    "register_method",
    "get_method",
    "available_methods",
]

for _m in (KMeansMethod(), SemiNMFMethod(), SparseSemiNMFMethod(), PCAMethod(), NMFMethod()):
    if _m.name not in available_methods():
        register_method(_m)
del _m
