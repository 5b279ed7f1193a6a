"""nnshift: concepts, fine-tuning shifts and steering of multimodal LLMs, on nnsight and TransformerLens."""

from nnshift import errors
from nnshift.data import Sample
from nnshift.errors import NnshiftError
from nnshift.store import Activations, pair

__version__ = "0.1.0"

__all__ = ["Activations", "NnshiftError", "Sample", "__version__", "errors", "pair"]
