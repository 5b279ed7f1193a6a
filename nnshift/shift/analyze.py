"""`analyze`: the shift analysis of an original (a) and a fine-tuned (b) model, as a few stages.

1. `_inputs`: check and pair everything (activations, dictionaries, α, ``n_mas``) before any work;
2. `_shift_stage`: assignment ``A_k``, shift vectors ``Δ_k``, shifted concepts ``u^s_k``, consistencies;
3. `_recovery_stage`: similarity, matching, recovery of the original and the shifted concepts;
4. `_sample_stage`: most-activating samples and their overlaps;
5. `_word_stage`: text groundings and T-Overlaps (with ``vlm=`` or ``ground=``);
6. correlations, dynamics and provenance; the report is the union of the stage results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.arguments import check_int, renamed_keywords
from nnshift.errors import ArgumentError, ConceptError
from nnshift.metrics import (
    ConceptDictionaryLike,
    assign,
    check_top_n,
    concept_matrix,
    concept_scores,
    cosine_matrix,
    text_overlap,
    top_rows,
)
from nnshift.models.protocol import LensLike
from nnshift.shift.checks import ActsA, ActsB, Grounder, check_alpha, check_dictionaries, pair_matrices
from nnshift.shift.metrics import (
    DynamicsThresholds,
    classify_dynamics,
    correlation,
    mas_overlap,
    match_concepts,
    recovery,
    shift_stats,
    shifted_concepts,
)
from nnshift.shift.report import ShiftReport, vlm_grounder
from nnshift.store import Activations

__all__ = ["analyze", "shifted_dictionary"]


@dataclass
class _Inputs:
    """Checked inputs: paired activations and both concept matrices on a's device, in one dtype."""

    a: Float[Tensor, "m d"]
    b: Float[Tensor, "m d"]
    ids: list[str]
    concepts_a: Float[Tensor, "k d"]
    concepts_b: Float[Tensor, "k d"]
    alpha: float
    n_mas: int


@dataclass
class _ShiftStage:
    """Stage 2; the field names are the report's."""

    assignment: Int[Tensor, " m"]
    counts: Int[Tensor, " k"]
    empty: Int[Tensor, " e"]
    shift_vectors: Float[Tensor, "k d"]
    shifted: Float[Tensor, "k d"]
    consistency: Float[Tensor, " k"]
    pairwise_consistency: Float[Tensor, " k"]
    magnitude: Float[Tensor, " k"]
    mean_sample_shift: Float[Tensor, " k"]


@dataclass
class _RecoveryStage:
    """Stage 3; the field names are the report's."""

    similarity: Float[Tensor, "k k"]
    matching: Int[Tensor, " k"]
    greedy_matching: Int[Tensor, " k"]
    recovery_original: Float[Tensor, " k"]
    recovery_shifted: Float[Tensor, " k"]


@dataclass
class _SampleStage:
    """Stage 4; the field names are the report's."""

    mas_original: Int[Tensor, "k n"]
    mas_shifted: Int[Tensor, "k n"]
    mas_finetuned: Int[Tensor, "k n"]
    mas_overlap_original: Float[Tensor, " k"]
    mas_overlap_shifted: Float[Tensor, " k"]


@dataclass
class _WordStage:
    """Stage 5 (all None without a grounding); the field names are the report's."""

    t_overlap_original: Float[Tensor, " k"] | None = None
    t_overlap_shifted: Float[Tensor, " k"] | None = None
    words_original: list[list[str]] | None = None
    words_shifted: list[list[str]] | None = None
    words_finetuned: list[list[str]] | None = None


def _fields(stage: Any) -> dict[str, Any]:
    """A stage's fields as keyword arguments (shallow: the tensors are not copied)."""
    return {f.name: getattr(stage, f.name) for f in dataclasses.fields(stage)}


@renamed_keywords(dico_a="dictionary_a")
def shifted_dictionary(dictionary_a: ConceptDictionaryLike, shifted: Float[Tensor, "k d"]) -> ConceptDictionaryLike:
    """dictionary_a with its concepts replaced by the shifted ones: same method, parameters (e.g. sparsity) and state."""
    if dataclasses.is_dataclass(dictionary_a) and not isinstance(dictionary_a, type):
        names = {f.name for f in dataclasses.fields(dictionary_a)}
        if "concepts" in names:
            u = shifted.to(dtype=dictionary_a.concepts.dtype)
            return dataclasses.replace(dictionary_a, concepts=u, **({"codes": None} if "codes" in names else {}))
    make = getattr(type(dictionary_a), "from_concepts", None)
    if make is None:
        raise ConceptError(
            f"{type(dictionary_a).__name__} has no from_concepts: cannot build the shifted dictionary",
            "pass an nnshift.concepts.ConceptDictionary",
        )
    return make(shifted, method=dictionary_a.method)


def _inputs(
    acts_a: ActsA,
    acts_b: ActsB,
    dictionary_a: ConceptDictionaryLike,
    dictionary_b: ConceptDictionaryLike,
    alpha: Any,
    n_mas: int,
    same_model_ok: bool = False,
) -> _Inputs:
    """Stage 1: every input checked before any work."""
    a, b, ids = pair_matrices(acts_a, acts_b, same_model_ok=same_model_ok)
    u_a = concept_matrix(dictionary_a, "dictionary_a", a.device, a.dtype)
    u_b = concept_matrix(dictionary_b, "dictionary_b", a.device, a.dtype)
    check_dictionaries(u_a, u_b, a.shape[1])
    return _Inputs(a, b, ids, u_a, u_b, check_alpha(alpha), check_top_n(n_mas, a.shape[0]))


def _scores_a(dictionary_a: ConceptDictionaryLike, x: _Inputs) -> Float[Tensor, "m k"]:
    """``dictionary_a``'s scores of the original activations, with one column per concept."""
    v_a = concept_scores(dictionary_a, x.a, "dictionary_a")
    k = x.concepts_a.shape[0]
    if v_a.shape[1] != k:
        raise ConceptError(
            f"dictionary_a.transform returned {v_a.shape[1]} activations for K = {k}", "check dictionary_a"
        )
    return v_a


def _shift_stage(x: _Inputs, scores_a: Float[Tensor, "m k"]) -> _ShiftStage:
    """Stage 2: ``A_k`` (argmax of dictionary_a's scores), ``Δ_k``, ``u^s_k = u^a_k + α Δ_k`` and the consistencies."""
    assignment = assign(scores_a)
    st = shift_stats(x.b - x.a, assignment, x.concepts_a.shape[0])
    return _ShiftStage(
        assignment=assignment,
        counts=st.counts,
        empty=torch.nonzero(st.counts == 0).flatten(),
        shift_vectors=st.vectors,
        shifted=shifted_concepts(x.concepts_a, st.vectors, x.alpha),
        consistency=st.consistency,
        pairwise_consistency=st.pairwise,
        magnitude=st.vectors.norm(dim=1),
        mean_sample_shift=st.mean_norm,
    )


def _recovery_stage(x: _Inputs, shifted: Float[Tensor, "k d"]) -> _RecoveryStage:
    """Stage 3: ``S = cos(U^a, U^b)``, Hungarian and greedy matchings, recovery before and after the shift."""
    sim = cosine_matrix(x.concepts_a, x.concepts_b)
    matching = match_concepts(x.concepts_a, x.concepts_b, "hungarian")
    return _RecoveryStage(
        similarity=sim,
        matching=matching,
        greedy_matching=sim.argmax(dim=1),
        recovery_original=recovery(x.concepts_a, x.concepts_b, matching),
        recovery_shifted=recovery(shifted, x.concepts_b, matching),
    )


def _sample_stage(
    x: _Inputs,
    dictionaries: tuple[ConceptDictionaryLike, ConceptDictionaryLike],
    scores_a: Float[Tensor, "m k"],
    shifted: Float[Tensor, "k d"],
    matching: Int[Tensor, " k"],
) -> _SampleStage:
    """Stage 4: the most-activating samples of ``U^a`` (on a), ``U^b`` and ``U^s`` (on b) and their overlaps."""
    dictionary_a, dictionary_b = dictionaries
    n = x.n_mas
    mas_o = top_rows(scores_a, n)
    mas_b = top_rows(concept_scores(dictionary_b, x.b, "dictionary_b"), n)
    dictionary_s = shifted_dictionary(dictionary_a, shifted)
    mas_s = top_rows(concept_scores(dictionary_s, x.b, "the shifted dictionary"), n)
    return _SampleStage(
        mas_original=mas_o,
        mas_shifted=mas_s,
        mas_finetuned=mas_b,
        mas_overlap_original=mas_overlap(mas_o, mas_b, matching),
        mas_overlap_shifted=mas_overlap(mas_s, mas_b, matching),
    )


def _word_stage(
    ground: Grounder | None, x: _Inputs, shifted: Float[Tensor, "k d"], matching: Int[Tensor, " k"]
) -> _WordStage:
    """Stage 5: the groundings of ``U^a``, ``U^s``, ``U^b`` and the T-Overlaps with the matched fine-tuned concept."""
    if ground is None:
        return _WordStage()
    words_o, words_s, words_b = ground(x.concepts_a), ground(shifted), ground(x.concepts_b)
    dev = x.a.device
    return _WordStage(
        t_overlap_original=text_overlap(words_o, words_b, matching.cpu()).to(dev),
        t_overlap_shifted=text_overlap(words_s, words_b, matching.cpu()).to(dev),
        words_original=words_o,
        words_shifted=words_s,
        words_finetuned=words_b,
    )


def _correlations(sh: _ShiftStage, rec: _RecoveryStage, words: _WordStage) -> dict[str, dict[str, float]]:
    """Pearson correlations over the concepts that have samples (an empty concept has no shift to speak of)."""
    keep = sh.counts > 0
    gain = (rec.recovery_shifted - rec.recovery_original)[keep]
    cons, pair, mag = sh.consistency[keep], sh.pairwise_consistency[keep], sh.magnitude[keep]
    out = {
        "gain_vs_consistency": correlation(gain, cons),
        "gain_vs_pairwise_consistency": correlation(gain, pair),
        "gain_vs_magnitude": correlation(gain, mag),
        "consistency_vs_magnitude": correlation(cons, mag),
    }
    if words.t_overlap_original is not None and words.t_overlap_shifted is not None:
        t_gain = (words.t_overlap_shifted - words.t_overlap_original)[keep]
        out["t_gain_vs_consistency"] = correlation(t_gain, cons)
        out["t_gain_vs_magnitude"] = correlation(t_gain, mag)
    return out


def _info(
    acts: tuple[ActsA, ActsB], dictionaries: tuple[Any, Any], n_mas: int, top_words: int | None
) -> dict[str, Any]:
    """Provenance: both dictionaries' methods, the MAS and word counts, both activation sets' info."""
    return {
        "method_a": getattr(dictionaries[0], "method", None),
        "method_b": getattr(dictionaries[1], "method", None),
        "n_mas": n_mas,
        "top_words": top_words,
        "model_a": acts[0].info if isinstance(acts[0], Activations) else {},
        "model_b": acts[1].info if isinstance(acts[1], Activations) else {},
    }


def _check_options(thresholds: Any, ground: Any, top_words: Any, dictionaries: tuple[Any, Any]) -> None:
    """``thresholds``, ``ground``, ``top_words`` and the dictionaries of the right kinds (before any work)."""
    for name, dictionary in zip(("dictionary_a", "dictionary_b"), dictionaries, strict=True):
        if not callable(getattr(dictionary, "scores", None)) and not callable(getattr(dictionary, "transform", None)):
            raise ConceptError(
                f"{name} must be a concept dictionary (with .transform), got {type(dictionary).__name__}",
                "fit one with ns.concepts.fit(acts, k=...), or wrap vectors in ConceptDictionary.from_concepts(u)",
            )
    if thresholds is not None and not isinstance(thresholds, DynamicsThresholds):
        raise ArgumentError(f"thresholds must be DynamicsThresholds, got {thresholds!r}", "omit it or build one")
    if ground is not None and not callable(ground):
        raise ArgumentError(f"ground must be a callable, got {ground!r}", "pass e.g. ground=ns.concepts.ground_text")
    check_int(top_words, "top_words", 1)


@renamed_keywords(dico_a="dictionary_a", dico_b="dictionary_b")
def analyze(
    acts_a: ActsA,
    acts_b: ActsB,
    dictionary_a: ConceptDictionaryLike,
    dictionary_b: ConceptDictionaryLike,
    alpha: float | int = 1.0,
    *,
    vlm: LensLike | None = None,
    ground: Grounder | None = None,
    top_words: int = 15,
    n_mas: int = 5,
    thresholds: DynamicsThresholds | None = None,
    same_model_ok: bool = False,
) -> ShiftReport:
    """The shift analysis of an original (a) and a fine-tuned (b) model on paired samples; see docs/shift.md.

    ``vlm`` (or a ``ground`` callable mapping ``[K, D]`` concepts to word lists) enables the text-grounding
    comparisons (T-Overlap); ``n_mas`` is the number of most-activating samples per concept.
    Activations of different layers or selectors, and two captures of one model (unless
    ``same_model_ok=True``), raise `nnshift.errors.ProvenanceError`.
    """
    _check_options(thresholds, ground, top_words, (dictionary_a, dictionary_b))
    x = _inputs(acts_a, acts_b, dictionary_a, dictionary_b, alpha, n_mas, same_model_ok)
    th = thresholds or DynamicsThresholds()
    if ground is None and vlm is not None:
        ground = vlm_grounder(vlm, top_words)
    scores_a = _scores_a(dictionary_a, x)
    sh = _shift_stage(x, scores_a)
    rec = _recovery_stage(x, sh.shifted)
    mas = _sample_stage(x, (dictionary_a, dictionary_b), scores_a, sh.shifted, rec.matching)
    words = _word_stage(ground, x, sh.shifted, rec.matching)
    labels, new = classify_dynamics(rec.similarity, rec.matching, sh.counts, words.t_overlap_original, th)
    return ShiftReport(
        alpha=x.alpha,
        concepts_a=x.concepts_a,
        concepts_b=x.concepts_b,
        ids=x.ids,
        correlations=_correlations(sh, rec, words),
        dynamics=labels,
        new=new.to(x.a.device),
        thresholds=th,
        info=_info((acts_a, acts_b), (dictionary_a, dictionary_b), x.n_mas, top_words if ground is not None else None),
        _ground=ground,
        **_fields(sh),
        **_fields(mas),
        **_fields(rec),
        **_fields(words),
    )
