"""nnshift: concepts, fine-tuning shifts and steering of multimodal LLMs, on nnsight and TransformerLens."""

__version__ = "0.1.0"

from nnshift import concepts, data, errors, models, plots, positions, shift  # noqa: E402
from nnshift.capture import capture  # noqa: E402
from nnshift.data import Sample  # noqa: E402
from nnshift.errors import NnshiftError  # noqa: E402
from nnshift.generation import generate  # noqa: E402
from nnshift.models import VLM, ModelAdapter, load, register_adapter, supported_architectures  # noqa: E402
from nnshift.store import Activations, ActivationStore, load_activations, pair  # noqa: E402

__all__ = [
    "VLM",
    "ActivationStore",
    "Activations",
    "ModelAdapter",
    "NnshiftError",
    "Sample",
    "__version__",
    "capture",
    "concepts",
    "data",
    "errors",
    "generate",
    "load",
    "load_activations",
    "models",
    "pair",
    "plots",
    "positions",
    "register_adapter",
    "shift",
    "supported_architectures",
]
