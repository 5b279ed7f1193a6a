"""Steering: vectors (coarse, target-answer, fine-grained), trace-time patches, and how to choose vectors."""

from nnshift.generation import steer
from nnshift.steering.calibration import Calibration, calibrate
from nnshift.steering.deltas import LayerEdit, resolve_edits
from nnshift.steering.diagnostics import vector_diagnostics
from nnshift.steering.gates import ConceptGate
from nnshift.steering.operators import OPS
from nnshift.steering.patches import BoundPatch, Patch, PatchSet
from nnshift.steering.select import (
    ImpactScore,
    ProximityScore,
    answer_changes,
    by_impact,
    by_proximity,
    cluster_changes,
    kmeans_1d,
    rank_impact,
    word_direction,
)
from nnshift.steering.sweep_report import SweepReport, SweepRow
from nnshift.steering.sweeps import sweep
from nnshift.steering.targets import AnswerTypeTarget, CaptionStyle, TargetAnswer
from nnshift.steering.vector_io import load_vectors, save_vectors
from nnshift.steering.vectors import (
    SteeringVector,
    answer_type_vector,
    coarse,
    fine,
    fine_all,
    target_answer,
)

__all__ = [
    "BoundPatch",
    "ImpactScore",
    "LayerEdit",
    "Patch",
    "PatchSet",
    "ProximityScore",
    "SteeringVector",
    "answer_changes",
    "answer_type_vector",
    "by_impact",
    "by_proximity",
    "cluster_changes",
    "coarse",
    "fine",
    "fine_all",
    "kmeans_1d",
    "load_vectors",
    "rank_impact",
    "resolve_edits",
    "save_vectors",
    "steer",
    "target_answer",
    "word_direction",
    # sweeps and calibration
    "AnswerTypeTarget",
    "Calibration",
    "CaptionStyle",
    "SweepReport",
    "SweepRow",
    "TargetAnswer",
    "calibrate",
    "sweep",
    "vector_diagnostics",
    # operators and concept gates
    "ConceptGate",
    "OPS",
]
