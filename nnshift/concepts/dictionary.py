"""ConceptDictionary: K concept vectors with their method, parameters, fit diagnostics and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift import metrics
from nnshift.artifacts import write_artifact
from nnshift.concepts.methods import ConceptMethod, available_methods, get_method
from nnshift.errors import ArtifactError, ConceptError, HiddenSizeMismatchError
from nnshift.metrics import ConceptShape
from nnshift.models.protocol import LensLike
from nnshift.saved import check_finite, load_saved, typed_field
from nnshift.store import Activations

if TYPE_CHECKING:
    from nnshift.concepts.grounding import TopSamples

__all__ = ["ConceptDictionary", "FORMAT_VERSION", "matrix"]

#: 2: a checksummed artifact (nnshift.artifacts); 1: plain concepts.json + concepts.safetensors, still read
FORMAT_VERSION = 2
_KIND = "concepts"
_REMAKE = "the file is damaged or was edited by hand: fit and save the dictionary again"


def matrix(x: Any, name: str = "activations") -> Float[Tensor, "m d"]:
    """``x`` (`Activations` or tensor) as a checked ``[M, D]`` tensor; `ConceptError` when it is not 2-D."""
    return metrics.matrix(x, name, promote=False)


def check_parts(concepts: Tensor, codes: Tensor | None, state: dict[str, Tensor], method: str) -> None:
    """`ConceptError` unless ``concepts`` is ``[K, D]``, ``codes`` ``[M, K]`` (or None), the method's state ``[D]``."""
    if concepts.ndim != 2 or concepts.shape[0] == 0 or concepts.shape[1] == 0:
        raise ConceptError(
            f"concepts must be a non-empty [K, D] tensor, got shape {tuple(concepts.shape)}",
            "pass one concept vector per row",
        )
    k, d = concepts.shape
    if codes is not None and (codes.ndim != 2 or codes.shape[1] != k):
        raise ConceptError(
            f"codes have shape {tuple(codes.shape)} but there are K = {k} concepts",
            "pass codes of shape [M, K] (one column per concept), or codes=None",
        )
    keys = get_method(method).state_keys if method in available_methods() else ()
    for key, t in state.items():
        if key in keys and (not isinstance(t, Tensor) or tuple(t.shape) != (d,)):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConceptError(
                f"state {key!r} has shape {shape} but the concepts have hidden size D = {d}",
                f"pass the [D] = [{d}] {key} vector of the data the concepts come from",
            )


@dataclass(eq=False)
class ConceptDictionary(ConceptShape):
    """K concepts ``U`` (``[K, D]``) learnt (or given) with a method, and how to compute activations.

    ``params`` are the method's resolved parameters, ``diagnostics`` the fit record (``loss`` per
    iteration, ``reconstruction_error`` = ``‖Z - Ẑ‖_F / ‖Z‖_F`` ...), ``info`` the provenance
    (activations' info, number of samples, seed, versions), ``state`` the extra tensors a method
    needs (PCA's ``mean``, NMF's ``offset``), ``codes`` the activations of the training rows.
    """

    concepts: Float[Tensor, "k d"]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)
    codes: Float[Tensor, "m k"] | None = None

    def __post_init__(self) -> None:
        check_parts(self.concepts, self.codes, self.state, self.method)

    # ------------------------------------------------------------------ basic properties
    @property
    def reconstruction_error(self) -> float | None:
        """Relative reconstruction error of the training data (None for given concepts)."""
        return self.diagnostics.get("reconstruction_error")

    def __len__(self) -> int:
        return self.k

    def __repr__(self) -> str:
        err = self.reconstruction_error
        err_s = f", reconstruction_error={err:.4g}" if isinstance(err, float) else ""
        return f"ConceptDictionary(method={self.method!r}, k={self.k}, dim={self.dim}{err_s})"

    def _method(self) -> ConceptMethod[Any]:
        return get_method(self.method)

    @property
    def config(self) -> Any:
        """The method's typed config (e.g. `KMeansConfig`) built from ``params``; a dict for config-less methods."""
        return self._method().config(self.params)

    def to(self, device: str | torch.device) -> ConceptDictionary:
        """A copy with every tensor on ``device``."""
        return ConceptDictionary(
            concepts=self.concepts.to(device),
            method=self.method,
            params=dict(self.params),
            diagnostics=dict(self.diagnostics),
            info=dict(self.info),
            state={k: v.to(device) for k, v in self.state.items()},
            codes=self.codes.to(device) if self.codes is not None else None,
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_concepts(cls, concepts: Float[Tensor, "k d"], method: str = "kmeans", **params: Any) -> ConceptDictionary:
        """A dictionary from given vectors (e.g. shifted concepts); `transform` works as for a fitted one.

        Tensor-valued ``params`` named in the method's ``state_keys`` (PCA's ``mean``, NMF's
        ``offset``) become its state; the others are the method's parameters.
        """
        u = matrix(concepts, name="concepts").detach().to(torch.float32)
        m = get_method(method)
        state: dict[str, Tensor] = {}
        for key in m.state_keys:
            if key in params:
                t = params.pop(key)
                if not isinstance(t, Tensor) or t.shape != (u.shape[1],):
                    raise ConceptError(
                        f"{key} must be a [D] = [{u.shape[1]}] tensor",
                        f"pass the {key} vector of the data the concepts come from",
                    )
                state[key] = t.detach().to(device=u.device, dtype=torch.float32)
        cfg = m.config(params)
        m.check_concepts(u, cfg)
        return cls(
            concepts=u,
            method=method,
            params=m.params_of(cfg),
            diagnostics={"fitted": False},
            info={"source": "from_concepts"},
            state=state,
        )

    # ------------------------------------------------------------------ activations
    def _matrix(self, acts: Activations | Tensor) -> Float[Tensor, "m d"]:
        z = matrix(acts)
        if z.shape[1] != self.dim:
            raise HiddenSizeMismatchError(
                f"activations have hidden size {z.shape[1]} but the concepts have {self.dim}",
                "use activations of the same model and layer as the dictionary",
            )
        return z.to(torch.float32)

    def _on(self, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
        return self.concepts.to(device), {k: v.to(device) for k, v in self.state.items()}

    def transform(self, acts: Activations | Float[Tensor, "m d"]) -> Float[Tensor, "m k"]:
        """Activations ``V`` (``[M, K]``) of the rows of ``acts`` on the concepts (method-specific)."""
        z = self._matrix(acts)
        u, state = self._on(z.device)
        return self._method().transform(u, z, self.config, state)

    def reconstruct(self, acts: Activations | Float[Tensor, "m d"]) -> Float[Tensor, "m d"]:
        """The rows of ``acts`` rebuilt from their activations (``V U``, + mean/offset; nearest centroid for k-means)."""
        z = self._matrix(acts)
        u, state = self._on(z.device)
        m = self._method()
        cfg = m.config(self.params)
        return m.reconstruct(u, m.transform(u, z, cfg, state), cfg, state)

    def scores(self, acts: Activations | Float[Tensor, "m d"]) -> Float[Tensor, "m k"]:
        """How strongly each row expresses each concept: ``|v|`` (k-means: the similarity itself)."""
        return self._method().scores(self.transform(acts), self.config)

    def assign(self, acts: Activations | Float[Tensor, "m d"]) -> Int[Tensor, " m"]:
        """The concept of each row: ``argmax_i |v_i|`` (k-means: the most similar centroid)."""
        return metrics.assign(self.scores(acts))

    # ------------------------------------------------------------------ grounding
    def ground_text(self, vlm: LensLike, top: int = 15, pre_top: int = 200, **kwargs: Any) -> list[list[str]]:
        """Words of each concept decoded through the model's final norm and unembedding (see grounding)."""
        from nnshift.concepts.grounding import ground_text

        return ground_text(self, vlm, top=top, pre_top=pre_top, **kwargs)

    def top_samples(self, acts: Activations | Float[Tensor, "m d"], n: int = 5) -> TopSamples:
        """The ``n`` most activating samples of each concept (see grounding.top_samples)."""
        from nnshift.concepts.grounding import top_samples

        return top_samples(self, acts, n=n)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Save as ``path/concepts.safetensors`` + ``path/concepts.json`` (checksummed manifest, atomic; no pickle)."""
        tensors = {"concepts": self.concepts}
        if self.codes is not None:
            tensors["codes"] = self.codes
        tensors |= {f"state.{key}": t for key, t in self.state.items()}
        doc = {
            "method": self.method,
            "k": self.k,
            "dim": self.dim,
            "rows": None if self.codes is None else int(self.codes.shape[0]),
            "params": self.params,
            "diagnostics": self.diagnostics,
            "info": self.info,
        }
        return write_artifact(path, _KIND, FORMAT_VERSION, tensors, doc)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ConceptDictionary:
        """Load what `save` wrote: checksums, version, K and D across concepts, codes and state, finiteness."""
        path = Path(path)
        tensors, doc, _ = load_saved(
            path, _KIND, FORMAT_VERSION, "concept dictionary", "pass the folder that ConceptDictionary.save wrote"
        )
        where = f"the concept dictionary in {str(path)!r}"
        try:
            dico = cls(**_saved_parts(tensors, doc, where))
            dico._check_saved()
        except ConceptError as exc:
            raise ArtifactError(
                f"{where} is inconsistent: {exc.message}", f"{exc.hint}; or fit and save the dictionary again"
            ) from exc
        return dico.to(device) if str(device) != "cpu" else dico

    def _check_saved(self) -> None:
        """A loaded dictionary of a registered method: valid params and the state a fitted one needs."""
        if self.method not in available_methods():
            return  # a custom method: loads anywhere, transform needs it registered
        m = self._method()
        m.config(self.params)
        if self.diagnostics.get("fitted", True) is False:
            return  # given concepts (from_concepts): the state is optional
        missing = [key for key in m.state_keys if key not in self.state]
        if missing:
            raise ConceptError(
                f"a fitted {self.method!r} dictionary needs its state {missing}, which is not saved",
                f"the file concepts.safetensors must hold {', '.join('state.' + k for k in missing)}",
            )


def _saved_parts(tensors: dict[str, Tensor], doc: dict[str, Any], where: str) -> dict[str, Any]:
    """The constructor arguments of a saved dictionary: typed fields, known tensors, K / D / M as recorded, finite."""
    method = typed_field(doc, "method", str, where)
    parts: dict[str, Any] = {"method": method}
    for name in ("params", "diagnostics", "info"):
        parts[name] = typed_field(doc, name, dict, where, {})
    unknown = sorted(n for n in tensors if n not in ("concepts", "codes") and not n.startswith("state."))
    if "concepts" not in tensors or unknown:
        raise ArtifactError(
            f"{where} holds tensors {sorted(tensors)}: 'concepts' is required and {unknown} are unknown", _REMAKE
        )
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ArtifactError(f"{where}: tensor {name!r} is {t.dtype}, not a floating type", _REMAKE)
        check_finite(t, name, where)
    concepts, codes = tensors["concepts"], tensors.get("codes")
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    check_parts(concepts, codes, state, method)  # K and D across concepts, codes and state (ConceptError)
    recorded = {"k": concepts.shape[0], "dim": concepts.shape[-1], "rows": None if codes is None else codes.shape[0]}
    for name, actual in recorded.items():
        value = typed_field(doc, name, (int, type(None)), where, actual)  # legacy files have no K / D / rows fields
        if value != actual:
            raise ArtifactError(f"{where}: the JSON says {name} = {value} but the tensors give {actual}", _REMAKE)
    return parts | {"concepts": concepts, "codes": codes, "state": state}
