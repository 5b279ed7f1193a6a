"""Every user-facing failure of nnshift: one hierarchy, each message says what to do next."""

from __future__ import annotations

__all__ = [
    "NnshiftError",
    "UnsupportedModelError",
    "AdapterValidationError",
    "LayerOutOfRangeError",
    "HiddenSizeMismatchError",
    "TokenOfInterestError",
    "PositionError",
    "EmptyInputError",
    "NonFiniteError",
    "StoreError",
    "CorruptStoreError",
    "StoreMismatchError",
    "ArtifactError",
    "ArgumentError",
    "ImageReadError",
    "DataFormatError",
    "PairingError",
    "ProvenanceError",
    "ConceptError",
    "ZooError",
    "SteeringError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelConfigError",
    "ModelWeightsError",
    "LoraAdapterError",
    "DeviceError",
    "OptionsError",
]


class NnshiftError(Exception):
    """Base class of all nnshift errors: `message` says what went wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class UnsupportedModelError(NnshiftError):
    """The model's architecture has no adapter."""


class AdapterValidationError(NnshiftError):
    """An adapter's module paths or sizes do not match the loaded model."""


class LayerOutOfRangeError(NnshiftError, IndexError):
    """A layer index outside the language model's decoder layers."""


class HiddenSizeMismatchError(NnshiftError, ValueError):
    """A vector or activation matrix whose hidden size differs from what it is used with."""


class TokenOfInterestError(NnshiftError, ValueError):
    """A token of interest that is empty, cannot be tokenised, or was never produced."""


class PositionError(NnshiftError, ValueError):
    """A position selector that selects nothing, or positions that do not exist in the input."""


class EmptyInputError(NnshiftError, ValueError):
    """An empty sample list, activation set, or concept."""


class NonFiniteError(NnshiftError, ValueError):
    """NaN or Inf values in activations, concepts or vectors."""


class StoreError(NnshiftError):
    """Base class of on-disk store problems."""


class CorruptStoreError(StoreError):
    """A shard or manifest that fails its checksum or cannot be parsed."""


class StoreMismatchError(StoreError):
    """Resuming into a store written by another model, layer or selector."""


class ArgumentError(NnshiftError, ValueError):
    """An argument of the wrong type or outside its range (a layer given as a string, batch_size=0, ...)."""


class ImageReadError(NnshiftError):
    """An image file that cannot be opened."""


class DataFormatError(NnshiftError, ValueError):
    """A dataset or saved file in an unexpected format."""


class ArtifactError(CorruptStoreError, DataFormatError):
    """A saved artifact (activations, store, ...) that fails its checksum, version, shape, dtype or finiteness check."""


class PairingError(NnshiftError, ValueError):
    """Two activation sets that are not paired sample by sample."""


class ConceptError(NnshiftError, ValueError):
    """Bad concept-dictionary input: K too large, K mismatch, unknown method."""


class ZooError(NnshiftError, LookupError):
    """An unknown shapes-zoo model name, or a zoo checkpoint that is missing on disk."""


class SteeringError(NnshiftError, ValueError):
    """Inconsistent steering inputs: vectors from different layers, a patch with no layer, bad per-sample scales."""


class ModelLoadError(NnshiftError):
    """A model or adapter that cannot be loaded: missing folder, broken config, missing weights."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A local model or adapter folder that does not exist."""


class ModelConfigError(ModelLoadError, ValueError):
    """A config.json or adapter_config.json that is missing, not JSON, or not a model config."""


class ModelWeightsError(ModelLoadError):
    """Weight files that are missing or truncated."""


class LoraAdapterError(ModelLoadError):
    """A LoRA adapter that does not fit the base model, or whose weights do not land in it."""


class DeviceError(NnshiftError, ValueError):
    """A device that this machine does not have (e.g. ``"cuda"`` without a GPU)."""


class OptionsError(ArgumentError):
    """A run option out of range or of the wrong type (batch size, number of new tokens, progress, remote)."""


class ProvenanceError(PairingError, SteeringError):
    """Two activation sets of different layers, positions or hidden sizes, or a model compared with itself."""
