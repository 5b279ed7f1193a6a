"""nnshift: concepts, fine-tuning shifts and steering of multimodal LLMs, on nnsight and TransformerLens."""

__version__ = "0.1.0"

from nnshift import data, errors, positions
from nnshift.capture import capture
from nnshift.data import Sample
from nnshift.errors import NnshiftError
from nnshift.generation import generate
from nnshift.models import VLM, load
from nnshift.store import Activations, ActivationStore, load_activations, pair

__all__ = [
    "VLM",
    "ActivationStore",
    "Activations",
    "NnshiftError",
    "Sample",
    "__version__",
    "capture",
    "data",
    "errors",
    "generate",
    "load",
    "load_activations",
    "pair",
    "positions",
]
