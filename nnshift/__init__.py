"""nnshift: concepts, fine-tuning shifts and steering of multimodal LLMs, on nnsight and TransformerLens."""

from nnshift.cli import interrupt as _interrupt  # noqa: F401  (the `nnshift` command: Ctrl-C while importing exits 130)

# isort: split

from nnshift import concepts, data, errors, evaluate, models, plots, positions, shift, steering, zoo
from nnshift._version import __version__
from nnshift.capture import capture
from nnshift.data import Sample
from nnshift.errors import NnshiftError
from nnshift.generation import generate
from nnshift.models import VLM, ModelAdapter, load, register_adapter, supported_architectures
from nnshift.options import RunOptions
from nnshift.read import cache_activations, read, read_activations
from nnshift.steering import steer
from nnshift.store import Activations, ActivationStore, load_activations, pair, repair_store, verify_store

__all__ = [
    "VLM",
    "ActivationStore",
    "Activations",
    "ModelAdapter",
    "NnshiftError",
    "RunOptions",
    "Sample",
    "__version__",
    "cache_activations",
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
    "read",
    "read_activations",
    "register_adapter",
    "repair_store",
    "shift",
    "steer",
    "steering",
    "supported_architectures",
    "verify_store",
    "zoo",
]
