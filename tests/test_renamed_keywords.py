"""The former ``dico*`` keywords: they still work with a DeprecationWarning naming the new keyword, give the same
result as the new one, and together with the new one raise ArgumentError."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import nnshift as ns
from nnshift import metrics, shift
from nnshift.arguments import renamed_keywords
from nnshift.concepts import ConceptDictionary
from nnshift.errors import ArgumentError
from nnshift.shift.analyze import shifted_dictionary


def _world(seed: int = 0, m: int = 24, d: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g)
    b = a + 0.3 * torch.randn(m, d, generator=g)
    ids = [f"s{i}" for i in range(m)]
    acts_a = ns.Activations(a, ids=ids, info={"model": "a", "layer": 2})
    acts_b = ns.Activations(b, ids=ids, info={"model": "b", "layer": 2})
    da = ConceptDictionary.from_concepts(a[:k].clone(), method="kmeans")
    db = ConceptDictionary.from_concepts(b[k : 2 * k].clone(), method="kmeans")
    return acts_a, acts_b, da, db


def _quiet(fn, *args, **kwargs):
    """``fn``'s result; fails if it warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def _deprecated(old: str, new: str, fn, /, *args, **kwargs):
    """``fn``'s result, checking that it warns once, naming both keywords, at the caller's line."""
    with pytest.warns(DeprecationWarning) as rec:
        out = fn(*args, **kwargs)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert f"{old}=" in msg and f"{new}=" in msg, msg
    # at the caller's line (under the tests' type hook, its wrapper is the caller)
    assert rec[0].filename == __file__ or "jaxtyping" in rec[0].filename, rec[0].filename
    return out


# ---------------------------------------------------------------------------------------------------- the helper


@renamed_keywords(old="new")
def _f(x: int, new: int = 0, *, other: int = 1) -> tuple[int, int, int]:
    return x, new, other


def test_helper_maps_old_to_new_and_keeps_positional_calls():
    assert _quiet(_f, 1, 2, other=3) == (1, 2, 3)
    assert _quiet(_f, 1, new=2) == (1, 2, 1)
    with pytest.warns(DeprecationWarning, match=r"_f\(old=\.\.\.\) is now _f\(new=\.\.\.\)") as rec:
        assert _f(1, old=5) == (1, 5, 1)
    assert rec[0].filename == __file__ or "jaxtyping" in rec[0].filename  # the tests' type hook wraps the helper


def test_warning_points_at_the_callers_line_without_the_type_hook():
    """As users run it (no jaxtyping hook): the warning names the file and line of the call."""
    code = (
        "import warnings, torch, nnshift as ns\n"
        "d = ns.concepts.ConceptDictionary.from_concepts(torch.eye(3), method='kmeans')\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    ns.steering.fine(dico=d, i=0, j=1)\n"
        "print(rec[0].filename, rec[0].lineno, rec[0].category.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["<string>", "5", "DeprecationWarning"]
    assert _f.__name__ == "_f" and _f.__doc__ is None


@pytest.mark.parametrize("call", [lambda: _f(1, new=2, old=3), lambda: _f(1, 2, old=3)])
def test_helper_refuses_both_names(call):
    with pytest.raises(ArgumentError, match="both new= and its former name old=") as exc:
        call()
    assert "pass only new=" in exc.value.hint


# ---------------------------------------------------------------------------------------------------- the public names


def test_analyze_old_keywords():
    acts_a, acts_b, da, db = _world()
    new = _quiet(shift.analyze, acts_a, acts_b, dictionary_a=da, dictionary_b=db, same_model_ok=True)
    pos = _quiet(shift.analyze, acts_a, acts_b, da, db, same_model_ok=True)
    with pytest.warns(DeprecationWarning) as rec:
        old = shift.analyze(acts_a, acts_b, dico_a=da, dico_b=db, same_model_ok=True)
    assert sorted(str(r.message).split("(")[1] for r in rec) == [
        "dico_a=...) is now analyze",
        "dico_b=...) is now analyze",
    ]
    for rep in (new, old):
        for name in ("shifted", "similarity", "matching", "mas_original", "mas_shifted", "mas_finetuned"):
            assert torch.equal(getattr(rep, name), getattr(pos, name)), name
    with pytest.raises(ArgumentError, match="dictionary_b"):
        shift.analyze(acts_a, acts_b, da, dictionary_b=db, dico_b=db)
    with pytest.raises(ArgumentError, match="dictionary_a"):
        shift.analyze(acts_a, acts_b, da, db, dico_a=da)


def test_shifted_dictionary_old_keyword():
    _, _, da, _ = _world()
    u = da.concepts + 1.0
    old = _deprecated("dico_a", "dictionary_a", shifted_dictionary, dico_a=da, shifted=u)
    assert torch.equal(old.concepts, _quiet(shifted_dictionary, dictionary_a=da, shifted=u).concepts)
    assert torch.equal(old.concepts, u)


def test_fine_and_fine_all_old_keyword():
    _, _, da, _ = _world()
    ref = da.concepts[2].float() - da.concepts[0].float()
    new = _quiet(ns.steering.fine, dictionary=da, i=0, j=2)
    old = _deprecated("dico", "dictionary", ns.steering.fine, dico=da, i=0, j=2)
    assert torch.equal(new.vector, ref) and torch.equal(old.vector, ref)
    all_old = _deprecated("dico", "dictionary", ns.steering.fine_all, dico=da)
    all_new = _quiet(ns.steering.fine_all, da)
    assert sorted(all_old) == sorted(all_new) == [(i, j) for i in range(3) for j in range(3) if i != j]
    assert all(torch.equal(all_old[p].vector, all_new[p].vector) for p in all_new)
    with pytest.raises(ArgumentError, match="dictionary="):
        ns.steering.fine(da, 0, 1, dico=da)
    with pytest.raises(ArgumentError, match="dictionary="):
        ns.steering.fine_all(dictionary=da, dico=da)


def test_concept_functions_old_keyword():
    acts_a, _, da, _ = _world()
    x = acts_a.tensor
    for fn, kwargs, positional in [
        (metrics.concept_scores, {"x": x}, (x,)),
        (metrics.assign_samples, {"acts": acts_a}, (acts_a,)),
        (metrics.most_activating, {"acts": acts_a, "n": 4}, (acts_a, 4)),
        (metrics.concept_matrix, {}, ()),
    ]:
        old = _deprecated("dico", "dictionary", fn, dico=da, **kwargs)
        assert torch.equal(old, _quiet(fn, dictionary=da, **kwargs))
        assert torch.equal(old, _quiet(fn, da, *positional))
        with pytest.raises(ArgumentError, match="former name dico="):
            fn(da, *positional, dico=da)
    old = _deprecated("dico", "dictionary", ns.concepts.top_samples, dico=da, acts=acts_a, n=3)
    new = _quiet(ns.concepts.top_samples, dictionary=da, acts=acts_a, n=3)
    assert torch.equal(old.indices, new.indices) and old.ids == new.ids
    assert torch.equal(old.indices, metrics.most_activating(da, acts_a, 3))
