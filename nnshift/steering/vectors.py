"""Steering vectors: a ``[D]`` direction for one layer's residual stream, with how it was made; makers and I/O.

Makers (all in float32):

* `coarse`: ``mean(target) - mean(source)`` between two sets of representations (the paper's coarse shift);
* `target_answer`: the same recipe between the rows answered with one answer and those answered with another;
* `answer_type_vector`: the same between rows whose answers are of two answer types (yes/no -> number);
* `fine`: ``u_j - u_i``, from concept ``i`` to concept ``j`` of a concept dictionary; `fine_all`: every pair.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift._version import versions
from nnshift.answers import answer_type, normalize_answer
from nnshift.arguments import as_list, check_int, check_mapping, check_str, check_strings, renamed_keywords
from nnshift.artifacts import write_artifact
from nnshift.errors import (
    ArgumentError,
    ArtifactError,
    EmptyInputError,
    HiddenSizeMismatchError,
    NnshiftError,
    NonFiniteError,
    SteeringError,
)
from nnshift.metrics import concept_matrix
from nnshift.saved import check_finite, load_saved, typed_field
from nnshift.store import Activations, as_matrix, check_same_provenance

if TYPE_CHECKING:
    from nnshift.positions import SelectorLike
    from nnshift.steering.patches import Patch

__all__ = [
    "FORMAT_VERSION",
    "SteeringVector",
    "answer_type_vector",
    "coarse",
    "fine",
    "fine_all",
    "target_answer",
]

#: 2: checksummed artifacts (nnshift.artifacts); 1: plain vector(s).json + .safetensors, still read
FORMAT_VERSION = 2
_KIND = "vector"
_MANY_KIND = "vectors"
_REMAKE = "the file is damaged or was edited by hand: make and save the vector again"


def _check_vector(v: Tensor, what: str = "steering vector") -> None:
    if not isinstance(v, Tensor) or v.ndim != 1 or v.shape[0] == 0:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise HiddenSizeMismatchError(f"a {what} must be a non-empty [D] tensor, got {shape}", "pass one [D] vector")
    if not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).sum())
        raise NonFiniteError(
            f"the {what} has {bad} NaN/Inf values out of {v.shape[0]}",
            "check the activations it was computed from (ns.capture in float32; no empty groups)",
        )


@dataclass(eq=False)
class SteeringVector:
    """A steering direction ``s`` (``[D]``, float32) for the residual stream after decoder ``layer``.

    ``method`` says how it was made (``"coarse"``, ``"target_answer"``, ``"answer_type"``, ``"fine"``,
    ``"given"``); ``info`` keeps the provenance: model, layer, the sample ids of the source and target sets
    (or the concept indices and dictionary), library versions.
    """

    vector: Float[Tensor, " d"]
    layer: int | None = None
    method: str = "given"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_vector(self.vector)
        self.vector = self.vector.detach().to(dtype=torch.float32)
        if self.layer is not None:
            self.layer = int(self.layer)

    @property
    def dim(self) -> int:
        """Hidden size D."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """Euclidean norm of the vector."""
        return float(self.vector.norm())

    def __repr__(self) -> str:
        name = f", name={self.info['name']!r}" if "name" in self.info else ""
        return f"SteeringVector(method={self.method!r}, layer={self.layer}, dim={self.dim}, norm={self.norm:.4g}{name})"

    def __neg__(self) -> SteeringVector:
        """The opposite direction (target -> source), provenance kept with the roles swapped."""
        info = dict(self.info)
        if "source" in info or "target" in info:
            info["source"], info["target"] = self.info.get("target"), self.info.get("source")
        if "concepts" in info:
            i, j = info["concepts"]
            info["concepts"] = [j, i]
        info["negated"] = not self.info.get("negated", False)
        return SteeringVector(-self.vector, self.layer, self.method, info)

    def patch(
        self,
        alpha: float | Tensor = 1.0,
        positions: SelectorLike = "all",
        *,
        layer: int | None = None,
        rows: Tensor | Sequence[bool] | Sequence[float] | None = None,
        op: str = "add",
        value: float | None = None,
        gate: Any = None,
    ) -> Patch:
        """A `Patch` adding ``alpha * s`` at ``positions`` (default ``"all"``, like the reference) of ``layer``.

        ``alpha`` must be finite and ``alpha * s`` finite in float32 (`nnshift.errors.NonFiniteError`);
        `nnshift.steer` / `Patch.bind` check it again in the model's dtype. ``op`` / ``value`` / ``gate``: another
        operator or a concept gate (see `Patch`).
        """
        from nnshift.steering.checks import check_alpha, check_edit_finite
        from nnshift.steering.patches import Patch

        check_alpha(alpha)
        check_int(layer, "layer", optional=True)
        patch = Patch(self, alpha=alpha, positions=positions, layer=layer, rows=rows, op=op, value=value, gate=gate)
        check_edit_finite(patch)
        return patch

    def to_dict(self) -> dict[str, Any]:
        """The JSON side of the vector (everything but the tensor)."""
        return {
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "method": self.method,
            "dim": self.dim,
            "norm": self.norm,
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Save as ``path/vector.safetensors`` + ``path/vector.json`` (checksummed manifest, atomic writes)."""
        return write_artifact(path, _KIND, FORMAT_VERSION, {"vector": self.vector}, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Load what `save` wrote: checksums, version, ``dim`` and ``norm`` against the tensor, finiteness."""
        path = Path(path)
        tensors, doc, _ = load_saved(
            path, _KIND, FORMAT_VERSION, "steering vector", "pass the folder that SteeringVector.save wrote"
        )
        where = f"the steering vector in {str(path)!r}"
        if set(tensors) != {"vector"}:
            raise ArtifactError(f"{where} holds tensors {sorted(tensors)}, not one 'vector'", _REMAKE)
        return _vector_from(tensors["vector"], doc, where)


def _vector_from(vector: Tensor, doc: Any, where: str) -> SteeringVector:
    """A `SteeringVector` from its saved tensor and JSON entry, checked: 1-D, finite, ``dim`` and ``norm`` agree."""
    if not isinstance(doc, dict):
        raise ArtifactError(f"{where} is not a JSON object (got {type(doc).__name__})", _REMAKE)
    layer = typed_field(doc, "layer", (int, type(None)), where, None)
    method = typed_field(doc, "method", str, where, "given")
    info = typed_field(doc, "info", dict, where, {})
    dim = typed_field(doc, "dim", int, where)
    norm = typed_field(doc, "norm", (int, float), where)
    if vector.ndim != 1 or not vector.is_floating_point():
        raise ArtifactError(f"{where}: the tensor is {vector.dtype} of shape {tuple(vector.shape)}, not [D]", _REMAKE)
    check_finite(vector, "vector", where)
    if dim != vector.shape[0]:
        raise ArtifactError(f"{where}: the JSON says dim = {dim} but the tensor has {vector.shape[0]} values", _REMAKE)
    actual = float(vector.float().norm())
    if not math.isclose(norm, actual, rel_tol=1e-4, abs_tol=1e-6):
        raise ArtifactError(f"{where}: the JSON says norm = {norm:.6g} but the tensor's is {actual:.6g}", _REMAKE)
    try:
        return SteeringVector(vector, layer, method, info)
    except NnshiftError as exc:
        raise ArtifactError(f"{where} is invalid: {exc.message}", _REMAKE) from exc


# ---------------------------------------------------------------------------- provenance helpers


def _versions() -> dict[str, str]:
    return {**versions(libraries=False), "torch": torch.__version__}


def _describe(x: Activations | Tensor) -> dict[str, Any]:
    if isinstance(x, Activations):
        keys = ("model", "layer", "selector", "weights", "lora")
        return {
            "n": len(x),
            "ids": list(x.ids),
            **{k: x.info.get(k) for k in keys if k in x.info or k in ("model", "layer")},
        }
    return {"n": int(x.shape[0])}


def _check_layer(layer: Any, data_layer: Any, what: str) -> int | None:
    """``layer=`` as an int (None: the data's layer); `ProvenanceError` if it contradicts the data's layer."""
    if layer is None:
        return None if data_layer is None else int(data_layer)
    check_int(layer, "layer")
    check_same_provenance({"layer": layer}, {"layer": data_layer}, ("layer=", what), fields=("layer",))
    return layer


def _layer_of(*sets: Activations | Tensor, layer: Any) -> int | None:
    """The layer of the source and target sets, which must agree (and agree with ``layer=`` if given)."""
    if len(sets) == 2:
        check_same_provenance(sets[0], sets[1], ("source", "target"), fields=("layer", "hidden_size"))
    layers = [x.info.get("layer") for x in sets if isinstance(x, Activations) and x.info.get("layer") is not None]
    return _check_layer(layer, layers[0] if layers else None, "the activations")


def _model_of(*sets: Activations | Tensor) -> Any:
    models = [x.info.get("model") for x in sets if isinstance(x, Activations) and x.info.get("model")]
    return models[0] if models else None


def _check_acts(acts: Any) -> None:
    """``acts`` is an `Activations` (answers and samples are needed, a plain tensor has none)."""
    if not isinstance(acts, Activations):
        raise ArgumentError(
            f"acts must be an Activations, got {type(acts).__name__}", "pass what ns.capture returned (with answers)"
        )


def _mean_difference(source: Activations | Tensor, target: Activations | Tensor) -> Float[Tensor, " d"]:
    a = as_matrix(source, "source")
    b = as_matrix(target, "target")
    if a.shape[1] != b.shape[1]:
        raise HiddenSizeMismatchError(
            f"source has hidden size {a.shape[1]}, target {b.shape[1]}",
            "take both sets from the same model and layer",
        )
    return b.float().mean(0) - a.float().to(b.device).mean(0)


# ---------------------------------------------------------------------------- makers


def coarse(
    source: Activations | Float[Tensor, "m d_source"],
    target: Activations | Float[Tensor, "n d_target"],
    layer: int | None = None,
    *,
    name: str | None = None,
) -> SteeringVector:
    """Coarse steering vector ``mean(target) - mean(source)`` (float32), from source towards target.

    ``source`` / ``target``: `Activations` or ``[M, D]`` tensors of the same layer (e.g. questions answered
    yes/no -> answered with a number). ``layer`` defaults to the activations' layer.

    Both sets must come from one layer and hidden size (else `nnshift.errors.ProvenanceError`); they may
    come from two models (base -> fine-tuned) or two position selectors (generated mean -> a colour word's
    token, the caption-style recipe): both are recorded in ``info["source"]`` / ``info["target"]``.
    """
    vec = _mean_difference(source, target)
    layer_ = _layer_of(source, target, layer=layer)
    info: dict[str, Any] = {
        "model": _model_of(source, target),
        "layer": layer_,
        "source": _describe(source),
        "target": _describe(target),
        "versions": _versions(),
    }
    if name is not None:
        info["name"] = name
    from nnshift.steering.diagnostics import vector_diagnostics

    info["diagnostics"] = vector_diagnostics(source, target, vec)  # consistency and separation, see diagnostics.py
    return SteeringVector(vec, layer_, "coarse", info)


AnswerSource = Literal["answer", "reference", "both"]


def _row_answers(acts: Activations, by: AnswerSource) -> list[list[str]]:
    """Per row, the answers to match: the model's own answer, the sample's references, or both (all must agree)."""
    if by == "answer":
        return [[a] for a in acts.answers]
    if by not in ("reference", "both"):
        raise SteeringError(f"unknown by={by!r}", "use by='answer', 'reference' or 'both'")
    if acts.samples is None:
        raise SteeringError(
            "by='reference' needs the samples of the activations (Activations.samples is None after loading from disk)",
            "set acts.samples = [...] (one Sample per row), or use by='answer'",
        )
    refs = [list(s.answers[:1]) for s in acts.samples]
    if by == "reference":
        return refs
    return [[a, *r] for a, r in zip(acts.answers, refs, strict=True)]


def _group_rows(
    acts: Activations, predicate: Callable[[str], bool], by: AnswerSource
) -> tuple[list[int], list[list[str]]]:
    answers = _row_answers(acts, by)
    rows = [m for m, options in enumerate(answers) if options and all(predicate(a) for a in options)]
    return rows, answers


def _seen(answers: list[list[str]], key: Callable[[str], str] = normalize_answer) -> str:
    counts = Counter(key(a[0]) for a in answers if a)
    return ", ".join(f"{a!r} x{c}" for a, c in counts.most_common(6)) or "no answers"


def _as_set(x: str | Iterable[str]) -> set[str]:
    items = [x] if isinstance(x, str) else list(x)
    return {normalize_answer(a) for a in items}


def _first_word(a: str) -> str:
    n = normalize_answer(a)
    return n.split()[0] if n else ""


def target_answer(
    acts: Activations,
    source: str | Iterable[str],
    target: str | Iterable[str],
    *,
    by: AnswerSource = "answer",
    match: Literal["exact", "first_word"] = "exact",
    layer: int | None = None,
) -> SteeringVector:
    """Target-answer vector: mean of the rows answered ``target`` minus mean of the rows answered ``source``.

    Rows of ``acts`` are grouped by their answers after `normalize_answer` (``"Yes."`` == ``"yes"``,
    ``"two"`` == ``"2"``); ``source`` / ``target`` may list several answers. ``by="answer"`` uses the model's
    own answers (``acts.answers``), ``"reference"`` the samples' first reference answer, ``"both"`` needs
    both to agree. ``match="first_word"`` compares only the answers' first word.
    """
    _check_acts(acts)
    check_strings(source, "source"), check_strings(target, "target")
    if match not in ("exact", "first_word"):
        raise SteeringError(f"unknown match={match!r}", "use match='exact' or match='first_word'")
    key = _first_word if match == "first_word" else normalize_answer
    src, tgt = _as_set(source), _as_set(target)
    if src & tgt:
        raise SteeringError(f"source and target share answers {sorted(src & tgt)}", "give two different answers")
    src_rows, answers = _group_rows(acts, lambda a: key(a) in src, by)
    tgt_rows, _ = _group_rows(acts, lambda a: key(a) in tgt, by)
    for what, rows, want in (("source", src_rows, src), ("target", tgt_rows, tgt)):
        if not rows:
            raise EmptyInputError(
                f"no row of the activations is answered {sorted(want)} ({what}); answers seen: {_seen(answers, key)}",
                "check the answers (acts.answers), use match='first_word', or capture more samples",
            )
    vec = coarse(acts.select(src_rows), acts.select(tgt_rows), layer=layer)
    vec.method = "target_answer"
    vec.info.update(source_answers=sorted(src), target_answers=sorted(tgt), by=by, match=match)
    return vec


def answer_type_vector(
    acts: Activations,
    source: str = "yes/no",
    target: str = "number",
    *,
    by: Literal["answer", "reference"] = "answer",
    types: Mapping[str, str] | None = None,
    layer: int | None = None,
) -> SteeringVector:
    """Coarse vector between answer types: rows whose answer is of type ``target`` minus those of type ``source``.

    ``by="answer"`` types the model's own answers with `nnshift.evaluate.answer_type` (yes/no, number, other);
    ``by="reference"`` uses the samples' ``meta["answer_type"]`` (VQAv2's ground-truth type).
    """
    _check_acts(acts)
    check_str(source, "source"), check_str(target, "target"), check_mapping(types, "types")
    if by == "answer":
        kinds = [answer_type(a, types) for a in acts.answers]
    elif by == "reference":
        if acts.samples is None:
            raise SteeringError("by='reference' needs Activations.samples", "set acts.samples, or use by='answer'")
        kinds = [str(s.meta.get("answer_type", answer_type(s.answers[0] if s.answers else ""))) for s in acts.samples]
    else:
        raise SteeringError(f"unknown by={by!r}", "use by='answer' or by='reference'")
    groups = {t: [m for m, k in enumerate(kinds) if k == t] for t in (source, target)}
    for t, rows in groups.items():
        if not rows:
            raise EmptyInputError(
                f"no row has answer type {t!r}; types seen: {dict(Counter(kinds))}",
                "capture samples of both answer types",
            )
    vec = coarse(acts.select(groups[source]), acts.select(groups[target]), layer=layer)
    vec.method = "answer_type"
    vec.info.update(source_type=source, target_type=target, by=by)
    return vec


def _concepts_of(dictionary: Any) -> Float[Tensor, "k d"]:
    """The checked ``[K, D]`` concepts of ``dictionary`` (`nnshift.metrics.concept_matrix`; `SteeringError` if none)."""
    return concept_matrix(dictionary, "dictionary", error=SteeringError)


def _dico_info(dictionary: Any) -> tuple[int | None, dict[str, Any]]:
    info = dict(getattr(dictionary, "info", {}) or {})
    acts_info = info.get("activations", {}) if isinstance(info.get("activations"), dict) else {}
    layer = info.get("layer", acts_info.get("layer"))
    desc = {
        "method": getattr(dictionary, "method", None),
        "k": int(_concepts_of(dictionary).shape[0]),
        "model": info.get("model", acts_info.get("model")),
        "sample_ids_sha1": info.get("sample_ids_sha1"),
    }
    return (int(layer) if layer is not None else None), desc


@renamed_keywords(dico="dictionary")
def fine(dictionary: Any, i: int, j: int, *, layer: int | None = None) -> SteeringVector:
    """Fine-grained vector ``u_j - u_i`` of a `ConceptDictionary` (or a ``.concepts [K, D]`` object): concept i to j."""
    concepts = _concepts_of(dictionary)
    k = concepts.shape[0]
    for idx, name in ((i, "i"), (j, "j")):
        check_int(idx, name)
        if not -k <= int(idx) < k:
            raise SteeringError(f"concept index {idx} is out of range for K={k}", f"use 0..{k - 1}")
    i, j = int(i) % k, int(j) % k
    if i == j:
        raise SteeringError(f"fine({i}, {j}): a concept to itself is the zero vector", "pick two different concepts")
    d_layer, desc = _dico_info(dictionary)
    layer_ = _check_layer(layer, d_layer, "the dictionary's activations")
    vec = concepts[j].float() - concepts[i].float()
    info = {"model": desc["model"], "layer": layer_, "concepts": [i, j], "dictionary": desc, "versions": _versions()}
    return SteeringVector(vec, layer_, "fine", info)


def _pairs(pairs: Any) -> list[tuple[int, int]]:
    """``pairs`` checked: an iterable of ``(i, j)`` concept-index pairs."""
    items = as_list(pairs)
    if items is None or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in items):
        raise ArgumentError(f"pairs must be a list of (i, j) index pairs, got {pairs!r}", "pass e.g. pairs=[(0, 1)]")
    return [(check_int(i, "i"), check_int(j, "j")) for i, j in items]


@renamed_keywords(dico="dictionary")
def fine_all(
    dictionary: Any, pairs: Iterable[tuple[int, int]] | None = None, *, layer: int | None = None
) -> dict[tuple[int, int], SteeringVector]:
    """Every fine-grained vector of a dictionary: ``{(i, j): u_j - u_i}`` for all ``i != j`` (or the given pairs)."""
    k = _concepts_of(dictionary).shape[0]
    chosen = [(i, j) for i in range(k) for j in range(k) if i != j] if pairs is None else _pairs(pairs)
    return {(int(i), int(j)): fine(dictionary, i, j, layer=layer) for i, j in chosen}


def __getattr__(name: str) -> Any:
    if name in ("save_vectors", "load_vectors"):  # moved to nnshift.steering.vector_io
        from nnshift.steering import vector_io

        return getattr(vector_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
