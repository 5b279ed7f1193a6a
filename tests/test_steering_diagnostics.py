"""Pre-run diagnostics of coarse vectors: values vs a plain re-computation, recorded by the makers and by_impact."""

import json
import math
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.errors import HiddenSizeMismatchError
from nnshift.steering import SteeringVector, answer_type_vector, coarse, target_answer
from nnshift.steering.diagnostics import DIAGNOSTIC_KEYS, vector_diagnostics
from nnshift.store import Activations

warnings.filterwarnings("ignore")


def _sets(seed=0, m=9, n=7, d=6, shift=2.0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    a = noise * torch.randn(m, d, generator=g)
    b = noise * torch.randn(n, d, generator=g)
    b[:, 0] += shift
    return a, b


def _plain(a, b, v):
    """The same quantities with explicit loops in float64."""
    a, b, v = a.double(), b.double(), v.double()
    ma = [sum(a[i, k] for i in range(len(a))) / len(a) for k in range(a.shape[1])]
    ma = torch.tensor(ma, dtype=torch.float64)
    cos = [float((b[j] - ma) @ v / ((b[j] - ma).norm() * v.norm())) for j in range(len(b))]
    c_mean = sum(cos) / len(cos)
    c_std = math.sqrt(sum((c - c_mean) ** 2 for c in cos) / len(cos))
    u = v / v.norm()
    pa, pb = [float(x @ u) for x in a], [float(x @ u) for x in b]
    mpa, mpb = sum(pa) / len(pa), sum(pb) / len(pb)
    va = sum((p - mpa) ** 2 for p in pa) / len(pa)
    vb = sum((p - mpb) ** 2 for p in pb) / len(pb)
    mid = (mpa + mpb) / 2
    right = sum(p < mid for p in pa) + sum(p > mid for p in pb)
    return {
        "consistency": c_mean,
        "consistency_std": c_std,
        "d_prime": (mpb - mpa) / math.sqrt((va + vb) / 2),
        "split_accuracy": right / (len(pa) + len(pb)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_match_a_plain_computation(seed):
    a, b = _sets(seed, shift=0.5 + seed)
    got = vector_diagnostics(a, b)
    want = _plain(a, b, b.mean(0) - a.mean(0))
    assert set(got) == set(DIAGNOSTIC_KEYS) and got["n_source"] == 9 and got["n_target"] == 7
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-5), k
    other = torch.randn(6, generator=torch.Generator().manual_seed(seed + 10))
    got = vector_diagnostics(a, b, other)
    for k, v in _plain(a, b, other).items():
        assert got[k] == pytest.approx(v, abs=1e-5), k


def test_a_clean_shift_is_consistent_and_separating():
    a, b = _sets(shift=20.0, noise=0.1)
    clean = vector_diagnostics(a, b)
    assert clean["consistency"] > 0.95 and clean["split_accuracy"] == 1.0 and clean["d_prime"] > 10
    a2, b2 = _sets(shift=0.0, noise=1.0)
    noisy = vector_diagnostics(a2, b2)
    assert noisy["consistency"] < clean["consistency"] and noisy["d_prime"] < clean["d_prime"]


def test_degenerate_and_errors():
    a = torch.ones(3, 4)
    out = vector_diagnostics(a, a.clone())
    assert out["consistency"] is None and out["d_prime"] is None and out["n_source"] == 3
    with pytest.raises(HiddenSizeMismatchError):
        vector_diagnostics(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(HiddenSizeMismatchError):
        vector_diagnostics(torch.ones(3, 4), torch.zeros(3, 4), torch.ones(5))


def _acts(x, answers, prefix):
    ids = [f"{prefix}{i}" for i in range(len(x))]
    return Activations(x, ids, answers=answers, info={"layer": 2, "model": "toy"})


def test_makers_record_diagnostics(tmp_path):
    a, b = _sets()
    vec = coarse(a, b, layer=2)
    assert vec.info["diagnostics"] == vector_diagnostics(a, b)
    acts = _acts(torch.cat([a, b]), ["yes"] * 9 + ["no"] * 7, "s")
    ta = target_answer(acts, "yes", "no")
    assert ta.info["diagnostics"] == pytest.approx(vector_diagnostics(a, b))
    acts_t = _acts(torch.cat([a, b]), ["yes"] * 9 + ["2"] * 7, "t")
    at = answer_type_vector(acts_t, "yes/no", "number")
    assert at.info["diagnostics"]["split_accuracy"] == vector_diagnostics(a, b)["split_accuracy"]
    vec.save(tmp_path / "v")
    assert SteeringVector.load(tmp_path / "v").info["diagnostics"] == vec.info["diagnostics"]


def test_by_impact_and_sweep_show_diagnostics():
    vlm = ns.zoo.load("shapes-base")
    yn = ns.zoo.dataset(6, task="vqa", answer_type="yes/no", seed=201)
    num = ns.zoo.dataset(6, task="vqa", answer_type="number", seed=202)
    acts = ns.capture(vlm, yn + num, layer=3, at="last_prompt", progress=False)
    vec = answer_type_vector(acts, "yes/no", "number", by="reference")
    scores = ns.steering.by_impact(vlm, yn, {"coarse": vec}, max_targets=None, progress=False)
    assert scores[0].diagnostics == vec.info["diagnostics"]
    assert json.loads(json.dumps(scores[0].to_dict()))["diagnostics"]["d_prime"] == pytest.approx(
        vec.info["diagnostics"]["d_prime"]
    )
    rep = ns.steering.sweep(
        vlm,
        vec,
        yn,
        target=ns.steering.AnswerTypeTarget("yes/no", "number"),
        alphas=(1.0,),
        max_new_tokens=3,
        progress=False,
    )
    assert rep.info["diagnostics"] == vec.info["diagnostics"] and "d_prime" in rep.table()
