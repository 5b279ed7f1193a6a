"""Property-based fuzz of the public API's arguments: a valid result or an `NnshiftError`, never another exception.

Arguments are drawn from strategies that mix valid and invalid values (wrong types, bools for ints,
negative / zero / huge numbers, NaN / Inf, empty lists, strings for numbers, wrong shapes). The functions
are called unwrapped (`inspect.unwrap`): the tests' run-time type checker would otherwise catch a
wrong-typed argument before nnshift's own check, and users run without it. Sizes that set the amount of
work (``max_new_tokens``, ``n`` of a dataset) are drawn small when valid, so the file runs in seconds.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import NnshiftError
from nnshift.steering import Patch, SteeringVector

warnings.filterwarnings("ignore")

#: the properties run in a child pytest without the tests' jaxtyping/beartype import hook: it also checks
#: nnshift's internal helpers, so a bad value would stop there instead of reaching nnshift's own checks
CHILD = os.environ.get("NNSHIFT_FUZZ_CHILD") == "1"
child_only = pytest.mark.skipif(not CHILD, reason="runs in test_fuzz_without_the_type_hook's child process")


@pytest.mark.skipif(CHILD, reason="the launcher itself")
def test_fuzz_without_the_type_hook():
    """Run this file's properties as users run nnshift: without the run-time type checker of the tests."""
    env = {**os.environ, "NNSHIFT_FUZZ_CHILD": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--tb=short", __file__]
    done = subprocess.run(cmd, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
NAN, INF = float("nan"), float("inf")
BAD_SCALARS = [None, True, False, "2", "x", "", 1.5, NAN, INF, -INF, 10**12, -(10**12), [], [1], (), {}, b"1"]
ints = st.one_of(st.integers(-3, 4), st.sampled_from(BAD_SCALARS))
small_counts = st.one_of(st.integers(-2, 3), st.sampled_from([None, True, "2", 1.5, NAN, INF, -(10**12), [], [2]]))
floats = st.one_of(
    st.floats(-5, 5), st.sampled_from([NAN, INF, -INF, 1e39, -1e39, 1e300, True, None, "1", [], [1.0, 2.0], 0])
)


def raw(fn: Any) -> Any:
    """``fn`` without the tests' type-checking wrapper (what users call)."""
    return inspect.unwrap(fn)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The result of ``fn``, or the `NnshiftError` it raised (with a hint); any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except NnshiftError as exc:
        assert exc.hint, f"{type(exc).__name__} without a hint: {exc}"
        return exc


@functools.cache
def world() -> dict[str, Any]:
    """One tiny random LLaVA, samples, activations, dictionaries and a vector, built once for the module."""
    from nnshift.models.testing import build_tiny, tiny_image

    root = Path(tempfile.mkdtemp(prefix="nnshift-fuzz-"))
    vlm = ns.load(build_tiny("llava", root / "llava"))
    samples = [
        ns.Sample(id=f"s{i}", prompt="what color is the circle", image=tiny_image(i), answers=["red"]) for i in range(3)
    ]
    g = torch.Generator().manual_seed(0)
    d = vlm.hidden_size
    acts = ns.Activations(
        torch.randn(12, d, generator=g),
        [f"r{i}" for i in range(12)],
        answers=["yes", "no", "2", "3"] * 3,
        info={"layer": 0},
    )
    acts_b = ns.Activations(acts.tensor + 0.3 * torch.randn(12, d, generator=g), list(acts.ids), info={"layer": 0})
    dico = ns.concepts.ConceptDictionary.from_concepts(torch.randn(3, d, generator=g))
    vec = SteeringVector(torch.randn(d, generator=g), layer=0)
    (root / "data.jsonl").write_text('{"id": "a", "prompt": "p", "answers": ["x"]}\n{"id": "b", "prompt": "q"}\n')
    (root / "binary.jsonl").write_bytes(bytes(range(256)))
    (root / "array.jsonl").write_text("[1, 2]\n")
    return {"root": root, "vlm": vlm, "samples": samples, "acts": acts, "acts_b": acts_b, "dico": dico, "vec": vec}


def sample_lists() -> st.SearchStrategy[Any]:
    """Valid sample lists and invalid ones (empty, strings, non-samples, duplicates, None)."""
    return st.sampled_from(["ok", "one", "empty", "str", "ints", "dup", "none", "gen", "tuple"])


def make_samples(kind: str) -> Any:
    s = world()["samples"]
    return {
        "ok": s[:2],
        "one": s[:1],
        "empty": [],
        "str": "what color",
        "ints": [1, 2],
        "dup": [s[0], s[0]],
        "none": None,
        "gen": (x for x in s[:2]),
        "tuple": tuple(s[:2]),
    }[kind]


def matrices() -> st.SearchStrategy[str]:
    return st.sampled_from(["acts", "tensor", "nan", "empty", "1d", "3d", "wide", "list", "none", "str", "int"])


def make_matrix(kind: str, which: str = "acts") -> Any:
    w = world()
    a = w[which]
    return {
        "acts": a,
        "tensor": a.tensor,
        "nan": torch.full_like(a.tensor, NAN),
        "empty": a.tensor[:0],
        "1d": a.tensor[0],
        "3d": a.tensor[None],
        "wide": torch.randn(12, a.dim + 3),
        "list": a.tensor.tolist(),
        "none": None,
        "str": "acts",
        "int": 3,
    }[kind]


SELECTORS = ["last_prompt", "all", "prompt", "image", "text", "bogus", "", 3, None, [], "generated"]


@child_only
@FUZZ
@given(
    samples=sample_lists(),
    layer=st.one_of(ints, st.sampled_from([[0, 1], [], ["0"], [0, 0], (1,), range(2), 99, -99])),
    at=st.sampled_from([*SELECTORS, P.generated(reduce="mean"), P.token_of_interest("red")]),
    batch_size=ints,
    max_new_tokens=small_counts,
    reduce=st.sampled_from([None, "mean", "sum", 1, True]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int8, torch.bool, "float32", None, float]),
    shard_size=ints,
)
def test_capture(samples, layer, at, batch_size, max_new_tokens, reduce, dtype, shard_size):
    """`ns.capture`: Activations (or a dict of them) or an NnshiftError."""
    w = world()
    kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "reduce": reduce, "dtype": dtype}
    res = outcome(
        raw(ns.capture), w["vlm"], make_samples(samples), layer, at, shard_size=shard_size, progress=False, **kw
    )
    assert isinstance(res, (NnshiftError, ns.Activations, dict))


@child_only
@FUZZ
@given(
    samples=sample_lists(), max_new_tokens=small_counts, batch_size=ints, edit=st.sampled_from([None, "x", 3, "patch"])
)
def test_generate(samples, max_new_tokens, batch_size, edit):
    """`ns.generate`: one answer per sample or an NnshiftError."""
    w = world()
    edit = w["vec"].patch(0.5) if edit == "patch" else edit
    res = outcome(raw(ns.generate), w["vlm"], make_samples(samples), max_new_tokens, batch_size, edit, progress=False)
    assert isinstance(res, (NnshiftError, list))


@child_only
@FUZZ
@given(
    samples=sample_lists(),
    patch=st.sampled_from(["ok", "per-sample", "wrong-count", "vector", "wide", "none", "str", "far-layer", "huge"]),
    max_new_tokens=small_counts,
    batch_size=ints,
)
def test_steer(samples, patch, max_new_tokens, batch_size):
    """`ns.steer`: one answer per sample or an NnshiftError."""
    w = world()
    vec, d = w["vec"], w["vlm"].hidden_size
    p = {
        "ok": vec.patch(0.5),
        "per-sample": vec.patch(torch.tensor([0.5, 1.0])),
        "wrong-count": vec.patch(torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])),
        "vector": vec,
        "wide": SteeringVector(torch.ones(d + 1), layer=0).patch(),
        "none": None,
        "str": "patch",
        "far-layer": vec.patch(layer=50),
        "huge": Patch(vec, alpha=1e39),
    }[patch]
    res = outcome(raw(ns.steer), w["vlm"], make_samples(samples), p, max_new_tokens, batch_size, progress=False)
    assert isinstance(res, (NnshiftError, list))


@child_only
@FUZZ
@given(a=matrices(), b=matrices(), same_model_ok=st.sampled_from([False, True, None, "yes"]))
def test_pair(a, b, same_model_ok):
    """`ns.pair`: two paired Activations or an NnshiftError."""
    res = outcome(raw(ns.pair), make_matrix(a), make_matrix(b, "acts_b"), same_model_ok=same_model_ok)
    assert isinstance(res, (NnshiftError, tuple))


@child_only
@FUZZ
@given(
    acts=matrices(),
    k=st.one_of(st.integers(-2, 14), st.sampled_from(BAD_SCALARS)),
    method=st.sampled_from(["kmeans", "pca", "nmf", "ica", "semi_nmf", "bogus", "", None, 3, "KMEANS"]),
    seed=ints,
)
def test_concepts_fit(acts, k, method, seed):
    """`ns.concepts.fit`: a ConceptDictionary or an NnshiftError."""
    res = outcome(raw(ns.concepts.fit), make_matrix(acts), k, method, seed)
    assert isinstance(res, (NnshiftError, ns.concepts.ConceptDictionary))


DICOS = ["dico", "tensor", "none", "str", "narrow", "few"]


def make_dico(kind: str) -> Any:
    dico = world()["dico"]
    return {
        "dico": dico,
        "tensor": dico.concepts,
        "none": None,
        "str": "dico",
        "narrow": dico.concepts[:, :4],
        "few": dico.concepts[:2],
    }[kind]


@child_only
@FUZZ
@given(
    a=matrices(),
    b=matrices(),
    dico_a=st.sampled_from(DICOS),
    dico_b=st.sampled_from(DICOS),
    alpha=floats,
    n_mas=ints,
    top_words=ints,
)
def test_shift_analyze(a, b, dico_a, dico_b, alpha, n_mas, top_words):
    """`ns.shift.analyze`: a ShiftReport or an NnshiftError."""
    res = outcome(
        raw(ns.shift.analyze),
        make_matrix(a),
        make_matrix(b, "acts_b"),
        make_dico(dico_a),
        make_dico(dico_b),
        alpha,
        n_mas=n_mas,
        top_words=top_words,
    )
    assert isinstance(res, (NnshiftError, ns.shift.ShiftReport))


@child_only
@FUZZ
@given(source=matrices(), target=matrices(), layer=ints, name=st.sampled_from([None, "v", 3, ""]))
def test_coarse(source, target, layer, name):
    """`ns.steering.coarse`: a SteeringVector or an NnshiftError."""
    res = outcome(raw(ns.steering.coarse), make_matrix(source), make_matrix(target, "acts_b"), layer, name=name)
    assert isinstance(res, (NnshiftError, SteeringVector))


ANSWERS = st.sampled_from(["yes", "no", "2", "", "maybe", None, 3, ["yes", "no"], [], ["yes", 3], True])


@child_only
@FUZZ
@given(
    acts=matrices(),
    source=ANSWERS,
    target=ANSWERS,
    by=st.sampled_from(["answer", "reference", "both", "bogus", None, 1]),
    match=st.sampled_from(["exact", "first_word", "fuzzy", None]),
    layer=ints,
)
def test_target_answer(acts, source, target, by, match, layer):
    """`ns.steering.target_answer`: a SteeringVector or an NnshiftError."""
    fn = raw(ns.steering.target_answer)
    res = outcome(fn, make_matrix(acts), source, target, by=by, match=match, layer=layer)
    assert isinstance(res, (NnshiftError, SteeringVector))


@child_only
@FUZZ
@given(
    acts=matrices(),
    source=st.sampled_from(["yes/no", "number", "other", "bogus", "", None, 3]),
    target=st.sampled_from(["yes/no", "number", "other", None, ["number"]]),
    by=st.sampled_from(["answer", "reference", "both", None]),
    types=st.sampled_from([None, {}, {"2": "yes/no"}, {"2": 3}, "types", [1]]),
    layer=ints,
)
def test_answer_type_vector(acts, source, target, by, types, layer):
    """`ns.steering.answer_type_vector`: a SteeringVector or an NnshiftError."""
    fn = raw(ns.steering.answer_type_vector)
    res = outcome(fn, make_matrix(acts), source, target, by=by, types=types, layer=layer)
    assert isinstance(res, (NnshiftError, SteeringVector))


@child_only
@FUZZ
@given(dico=st.sampled_from(DICOS), i=ints, j=ints, layer=ints)
def test_fine(dico, i, j, layer):
    """`ns.steering.fine`: a SteeringVector or an NnshiftError."""
    res = outcome(raw(ns.steering.fine), make_dico(dico), i, j, layer=layer)
    assert isinstance(res, (NnshiftError, SteeringVector))


@child_only
@FUZZ
@given(
    alpha=floats,
    positions=st.sampled_from([*SELECTORS, P.generated(), P.token_of_interest("red")]),
    layer=ints,
    rows=st.sampled_from([None, [True, False], [], [1.0, NAN], "rows", [[1.0]], 3, torch.ones(2, 2)]),
)
def test_vector_patch(alpha, positions, layer, rows):
    """`SteeringVector.patch`: a Patch or an NnshiftError."""
    res = outcome(raw(SteeringVector.patch), world()["vec"], alpha, positions, layer=layer, rows=rows)
    assert isinstance(res, (NnshiftError, Patch))


ANSWER_LISTS = st.sampled_from(["ok", "short", "empty", "none", "str", "ints"])


def make_answers(kind: str) -> Any:
    return {"ok": ["red", "2"], "short": ["red"], "empty": [], "none": None, "str": "red", "ints": [1, 2]}[kind]


@child_only
@FUZZ
@given(
    before=ANSWER_LISTS,
    after=ANSWER_LISTS,
    samples=sample_lists(),
    source=ANSWERS,
    target=ANSWERS,
    touched=st.sampled_from([None, "yes/no", ["other"], 3, []]),
    official=st.sampled_from([True, False, None, "no"]),
)
def test_compare_vqa(before, after, samples, source, target, touched, official):
    """`ns.evaluate.compare_vqa`: a comparison or an NnshiftError."""
    res = outcome(
        raw(ns.evaluate.compare_vqa),
        make_answers(before),
        make_answers(after),
        make_samples(samples),
        source=source,
        target=target,
        touched=touched,
        official=official,
    )
    assert isinstance(res, (NnshiftError, ns.evaluate.VQAComparison))


@child_only
@FUZZ
@given(
    path=st.sampled_from(["data.jsonl", "binary.jsonl", "array.jsonl", "missing.jsonl", ".", None, 3, ""]),
    image_dir=st.sampled_from([None, ".", "missing", 3]),
    limit=ints,
    seed=ints,
)
def test_load_jsonl(path, image_dir, limit, seed):
    """`ns.data.load_jsonl`: a list of samples or an NnshiftError."""
    root = world()["root"]
    p = root / path if isinstance(path, str) and path else path
    d = root / image_dir if isinstance(image_dir, str) else image_dir
    res = outcome(raw(ns.data.load_jsonl), p, d, limit=limit, seed=seed)
    assert isinstance(res, (NnshiftError, list))
    if isinstance(res, list) and isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        assert len(res) <= limit


@child_only
@FUZZ
@given(
    n=small_counts,
    style=st.sampled_from(["generic", "colors", "bogus", "", None, 3]),
    task=st.sampled_from(["caption", "vqa", "bogus", None]),
    seed=ints,
    answer_type=st.sampled_from([None, "yes/no", "number", "other", "bogus", 3]),
    question_kind=st.sampled_from([None, "color", "bogus", 3]),
)
def test_zoo_dataset(n, style, task, seed, answer_type, question_kind):
    """`ns.zoo.dataset`: n samples or an NnshiftError."""
    res = outcome(raw(ns.zoo.dataset), n, style, task, seed, answer_type, question_kind)
    assert isinstance(res, (NnshiftError, list))
    if isinstance(res, list):
        assert len(res) == n
