"""`ns.steering.calibrate`: the point is chosen on validation only, measured on held-out, saved and read back."""

import inspect
import json
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.errors import ArgumentError, ArtifactError, EmptyInputError
from nnshift.steering import Calibration, Patch, SteeringVector, calibrate
from nnshift.steering.calibration import choose_point, refine_alphas, split_samples
from nnshift.steering.sweep_report import SweepReport, SweepRow
from nnshift.steering.targets import AnswerTypeTarget, CaptionStyle

warnings.filterwarnings("ignore")

Q = {"max_new_tokens": 4, "progress": False, "fluency": False}
TARGET = AnswerTypeTarget("yes/no", "number")


@pytest.fixture(scope="module")
def vlm(shapes_vlm):
    return shapes_vlm


@pytest.fixture(scope="module")
def vec(yesno_number_vector):
    return yesno_number_vector


@pytest.fixture(scope="module")
def samples():
    return ns.zoo.dataset(20, task="vqa", seed=207)


@pytest.fixture(scope="module")
def calib(vlm, vec, samples):
    return calibrate(
        vlm, vec, samples, target=TARGET, alphas=(0.5, 1.0, 2.0), layers=[2, 3], max_untouched_drop=0.1, **Q
    )


def test_split_is_seeded_and_disjoint(samples):
    a, b = split_samples(samples, 0.5, 0)
    assert len(a) == 10 and len(b) == 10 and not {s.id for s in a} & {s.id for s in b}
    assert split_samples(samples, 0.5, 0) == (a, b) and split_samples(samples, 0.5, 1) != (a, b)
    assert len(split_samples(samples[:3], 0.01, 0)[0]) == 1 and len(split_samples(samples[:3], 0.99, 0)[1]) == 1


def test_chosen_point_follows_the_rule(calib):
    rows = calib.validation.steering
    ok = [r for r in rows if r.max_drop <= 0.1 + 1e-12]
    assert calib.met == bool(ok)
    best = max(r.target_rate for r in ok)
    assert calib.chosen.target_rate == best and calib.chosen.max_drop <= 0.1
    assert calib.alpha == min(r.alpha for r in ok if r.target_rate == best)
    assert calib.patch.layer == calib.layer and calib.patch.alpha == calib.alpha


def test_held_out_is_never_read_when_choosing(vlm, vec, samples, calib):
    held = set(calib.held_out.sample_ids)
    val = set(calib.validation.sample_ids)
    assert held and val and not held & val and held | val == {s.id for s in samples}
    assert [r.kind for r in calib.held_out.rows] == ["unsteered", "steer"]
    assert calib.held_out_row.layer == calib.layer and calib.held_out_row.alpha == calib.alpha
    # replace every held-out sample by a different question: the choice and the validation sweep are unchanged
    others = iter(ns.zoo.dataset(len(held), task="vqa", seed=999))
    changed = [next(others) if s.id in held else s for s in samples]
    again = calibrate(
        vlm, vec, changed, target=TARGET, alphas=(0.5, 1.0, 2.0), layers=[2, 3], max_untouched_drop=0.1, **Q
    )
    assert (again.layer, again.alpha, again.met) == (calib.layer, calib.alpha, calib.met)
    assert json.dumps(again.validation.to_dict(samples=True)) == json.dumps(calib.validation.to_dict(samples=True))
    assert set(again.held_out.sample_ids).isdisjoint(held)


def test_held_out_matches_a_plain_sweep(vlm, vec, samples, calib):
    _, held = split_samples(samples, 0.5, 0)
    rep = ns.steering.sweep(vlm, vec, held, target=TARGET, alphas=[calib.alpha], layers=[calib.layer], **Q)
    assert rep.steering[0].answers == calib.held_out_row.answers
    assert rep.unsteered.answers == calib.held_out_unsteered.answers
    assert "layer" in calib.summary()


def test_save_load_round_trip(calib, tmp_path):
    calib.save(tmp_path / "c")
    back = Calibration.load(tmp_path / "c")
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(calib.to_dict(), sort_keys=True)
    assert torch.equal(back.patch.vector.vector, calib.patch.vector.vector)
    doc = json.loads((tmp_path / "c" / "calibration.json").read_text())
    doc["doc"]["alpha"] = 123.0
    (tmp_path / "c" / "calibration.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError):
        Calibration.load(tmp_path / "c")


def _report(points):
    rows = [SweepRow("unsteered", "unsteered", target_rate=0.0, max_drop=0.0)]
    rows += [SweepRow("steer", f"L{x} a={a}", x, a, target_rate=r, max_drop=d) for x, a, r, d in points]
    return SweepReport(TARGET, rows, ["s"])


def test_choose_point_rule_exactly():
    row, met = choose_point(
        _report([(2, 0.5, 0.4, 0.0), (2, 1.0, 0.9, 0.05), (3, 0.5, 0.9, 0.01), (3, 1.0, 0.9, 0.0)]), 0.02
    )
    assert met and (row.layer, row.alpha) == (3, 0.5)  # highest rate within 2 points; tie -> smaller alpha
    row, met = choose_point(_report([(2, 0.5, 0.9, 0.01), (3, 0.5, 0.9, 0.0)]), 0.02)
    assert met and (row.layer, row.alpha) == (2, 0.5)  # same rate and alpha -> the earlier layer
    row, met = choose_point(_report([(2, 0.5, 0.3, 0.05), (2, 1.0, 0.9, 0.2), (3, 0.5, 0.6, 0.05)]), 0.02)
    assert not met and (row.layer, row.alpha) == (3, 0.5)  # least damaging; tie on drop -> higher rate


def test_no_point_meets_the_constraint(vlm, samples):
    loud = SteeringVector(20 * torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0)), layer=1)
    with pytest.warns(UserWarning, match="no \\(layer, alpha\\)"):
        c = calibrate(vlm, loud, samples, target=TARGET, alphas=(1.0, 2.0), max_untouched_drop=0.0, **Q)
    assert not c.met
    assert c.chosen.max_drop == min(r.max_drop for r in c.validation.steering)
    assert all(r.max_drop > 0 for r in c.validation.steering)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"max_untouched_drop": -0.1}, ArgumentError),
        ({"max_untouched_drop": float("nan")}, ArgumentError),
        ({"max_untouched_drop": True}, ArgumentError),
        ({"split": 0.0}, ArgumentError),
        ({"split": 1.0}, ArgumentError),
        ({"split": "half"}, ArgumentError),
        ({"seed": -1}, ArgumentError),
        ({"refine": -1}, ArgumentError),
        ({"refine": 2.0}, ArgumentError),
        ({"refine": True}, ArgumentError),
        ({"alphas": []}, ArgumentError),
        ({"samples_n": 1, "answer_type": "yes/no"}, ArgumentError),
        ({"answer_type": "yes/no"}, ArgumentError),
        ({"target": CaptionStyle("colors")}, ArgumentError),
        ({"keep_n": 1}, ArgumentError),
        ({"answer_type": "other"}, EmptyInputError),
    ],
)
def test_validation_before_any_work(vlm, vec, change, error, monkeypatch):
    monkeypatch.setattr(vlm, "prepare", lambda *a, **k: pytest.fail("a model call happened before validation"))
    n = change.pop("samples_n", 8)
    data = ns.zoo.dataset(n, task="vqa", seed=5, answer_type=change.pop("answer_type", None))
    if "keep_n" in change:
        change["keep"] = ns.zoo.dataset(change.pop("keep_n"), task="vqa", seed=6)
    kwargs = {"target": TARGET, **Q, **change}
    with pytest.raises(error) as info:
        inspect.unwrap(calibrate)(vlm, vec, data, **kwargs)
    assert info.value.hint


def test_a_patch_keeps_its_operator(vlm, vec, samples):
    """Calibrating a clamp patch chooses among clamp points and returns a clamp patch."""
    patch = Patch(vec, 1.0, layer=3, op="clamp", value=2.0)
    cal = calibrate(vlm, patch, samples, target=TARGET, alphas=(0.5, 1.0), max_untouched_drop=0.1, **Q)
    assert cal.patch.op == "clamp" and cal.patch.value == 2.0
    assert cal.validation.info["op"] == "clamp" and cal.held_out.info["op"] == "clamp"
    val = [s for s in samples if s.id in set(cal.validation.sample_ids)]
    alone = ns.steer(
        vlm,
        val,
        Patch(vec, cal.alpha, layer=3, op="clamp", value=2.0),
        batch_size=len(val),
        max_new_tokens=4,
        progress=False,
    )
    assert cal.chosen.answers == alone


def test_refine_alphas_rule_exactly():
    rep = _report(
        [(2, 0.5, 0.4, 0.0), (2, 1.0, 0.9, 0.05), (3, 0.5, 0.9, 0.01), (3, 1.5, 0.9, 0.3), (3, 1.0, 0.9, 0.1)]
    )
    l3 = rep.row(3, 0.5)
    assert refine_alphas(rep, l3, True, 3) == [0.625, 0.75, 0.875]  # toward the nearest larger alpha of layer 3
    assert refine_alphas(rep, rep.row(3, 1.5), True, 3) == []  # the last alpha: nothing beyond it
    assert refine_alphas(rep, l3, False, 1) == [0.25]  # nothing met: between 0 and the chosen alpha
    assert refine_alphas(rep, l3, True, 0) == []
    neg = _report([(2, -0.5, 0.4, 0.0), (2, -1.0, 0.9, 0.05), (2, 1.0, 0.0, 0.0)])
    assert refine_alphas(neg, neg.row(2, -0.5), True, 1) == [-0.75]  # same sign, larger magnitude
    assert refine_alphas(rep, rep.row(2, 0.5), True, 1) == [0.75]
    full = _report([(2, 0.5, 1.0, 0.0), (2, 1.0, 1.0, 0.0)])
    assert refine_alphas(full, full.row(2, 0.5), True, 3) == []  # already a full rate: nothing to gain


def test_refinement_adds_rows_between_grid_points(vlm, vec, samples):
    grid = (0.5, 1.0, 4.0)
    calib = calibrate(vlm, vec, samples, target=TARGET, alphas=grid, layers=[2, 3], max_untouched_drop=0.1, **Q)
    info = calib.validation.info["refine"]
    tried = info["alphas"]
    assert tried == [1.75, 2.5, 3.25] and calib.alpha in tried  # the window between 1 (chosen) and 4
    assert tried and all(a not in grid for a in tried)
    layer_rows = [r for r in calib.validation.steering if r.layer == info["layer"]]
    assert sorted(r.alpha for r in layer_rows) == sorted([*grid, *tried])
    assert [r.alpha for r in layer_rows] == sorted(r.alpha for r in layer_rows)  # rows kept in alpha order
    # each refined row is what a plain sweep at that strength gives on the validation half
    val, _ = split_samples(samples, 0.5, 0)
    plain = ns.steering.sweep(vlm, vec, val, target=TARGET, alphas=tried, layers=[info["layer"]], **Q)
    for r in plain.steering:
        got = calib.validation.row(info["layer"], r.alpha)
        assert got.answers == r.answers and got.target_rate == r.target_rate and got.max_drop == r.max_drop
    off = calibrate(vlm, vec, samples, target=TARGET, alphas=grid, layers=[2, 3], max_untouched_drop=0.1, refine=0, **Q)
    assert "refine" not in off.validation.info and sorted(off.validation.alphas) == list(grid)
    best_off = off.chosen.target_rate
    assert calib.chosen.target_rate >= best_off  # refinement only adds candidates
