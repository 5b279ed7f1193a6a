"""nnshift: concepts, fine-tuning shifts and steering of multimodal LLMs, on nnsight and TransformerLens."""

__version__ = "0.1.0"

from nnshift import concepts, data, errors, evaluate, models, plots, positions, shift, steering, zoo
from nnshift.capture import capture
from nnshift.data import Sample
from nnshift.errors import NnshiftError
from nnshift.generation import generate
from nnshift.models import VLM, ModelAdapter, load, register_adapter, supported_architectures
from nnshift.options import RunOptions
from nnshift.steering import steer
from nnshift.store import Activations, ActivationStore, load_activations, pair

__all__ = [
    "VLM",
    "ActivationStore",
    "Activations",
    "ModelAdapter",
    "NnshiftError",
    "RunOptions",
    "Sample",
    "__version__",
    "capture",
    "concepts",
    "data",
    "errors",
    "evaluate",
    "generate",
    "load",
    "load_activations",
    "models",
    "pair",
    "plots",
    "positions",
    "register_adapter",
    "shift",
    "steer",
    "steering",
    "supported_architectures",
    "zoo",
]
