"""`ns.steering.sweep` on the shapes world: the one-generation grid equals separate runs, metrics vs references."""

import dataclasses
import inspect
import json
import math
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.artifacts import seal
from nnshift.errors import (
    ArgumentError,
    ArtifactError,
    EmptyInputError,
    LayerOutOfRangeError,
    NnshiftError,
    OptionsError,
    SteeringError,
)
from nnshift.evaluate import answer_type, has_style, normalize_answer, vqa_accuracy
from nnshift.steering import Patch, SteeringVector
from nnshift.steering.sweep_report import SweepReport
from nnshift.steering.sweeps import first_token_ids, sweep
from nnshift.steering.targets import AnswerTypeTarget, CaptionStyle, TargetAnswer

warnings.filterwarnings("ignore")

Q = {"max_new_tokens": 4, "progress": False}
ALPHAS = (0.0, 0.75, 2.0)


@pytest.fixture(scope="module")
def vlm(shapes_vlm):
    return shapes_vlm


@pytest.fixture(scope="module")
def vec(yesno_number_vector):
    return yesno_number_vector


@pytest.fixture(scope="module")
def evalset():
    return ns.zoo.dataset(14, task="vqa", seed=203)


@pytest.fixture(scope="module")
def report(vlm, vec, evalset):
    return sweep(
        vlm,
        vec,
        evalset,
        target=AnswerTypeTarget("yes/no", "number"),
        alphas=ALPHAS,
        layers=[2, 3],
        prompts={"prompt: number": "Answer with a number."},
        models={"same model": vlm},
        batch_size=len(evalset),
        **Q,
    )


def test_grid_equals_separate_runs(vlm, vec, evalset, report):
    n = len(evalset)
    assert report.unsteered.answers == ns.generate(vlm, evalset, batch_size=n, **Q)
    for layer in (2, 3):
        for a in ALPHAS:
            alone = ns.steer(vlm, evalset, Patch(vec, a, layer=layer), batch_size=n, **Q)
            assert report.row(layer, a).answers == alone, (layer, a)
    assert [r.label for r in report.steering] == [f"L{x} a={a:g}" for x in (2, 3) for a in ALPHAS]


def test_a_patch_keeps_its_operator_at_every_grid_point(vlm, vec, evalset):
    """A project-out / clamp patch is swept as that operator, never silently as an addition."""
    n = len(evalset)
    for kw in ({"op": "project_out"}, {"op": "clamp", "value": 2.0}):
        rep = sweep(
            vlm,
            Patch(vec, 1.0, layer=3, **kw),
            evalset,
            target=AnswerTypeTarget("yes/no", "number"),
            alphas=(1.0, 3.0),
            fluency=False,
            steerability=False,
            **Q,
        )
        assert rep.info["op"] == kw["op"]
        for a in (1.0, 3.0):
            alone = ns.steer(vlm, evalset, Patch(vec, a, layer=3, **kw), batch_size=n, **Q)
            assert rep.row(3, a).answers == alone, (kw, a)
    added = ns.steer(vlm, evalset, Patch(vec, 3.0, layer=3), batch_size=n, **Q)
    projected = ns.steer(vlm, evalset, Patch(vec, 3.0, layer=3, op="project_out"), batch_size=n, **Q)
    assert added != projected  # the check above could tell the two operators apart


def test_alpha_zero_is_unsteered(report):
    base = report.unsteered
    for layer in (2, 3):
        r = report.row(layer, 0.0)
        assert r.answers == base.answers
        assert r.sample_margin == pytest.approx(base.sample_margin, abs=1e-5)
        assert r.sample_moved == [0] * len(base.answers)
        assert r.target_rate == base.target_rate and r.max_drop == 0.0
    assert base.toward == 0.0 and base.away == 0.0


def test_baselines(vlm, evalset, report):
    same = next(r for r in report.rows if r.kind == "model")
    assert same.answers == report.unsteered.answers and same.name == "same model"
    prompted = [dataclasses.replace(s, prompt=s.prompt + " Answer with a number.") for s in evalset]
    row = next(r for r in report.rows if r.kind == "prompt")
    assert row.answers == ns.generate(vlm, prompted, batch_size=len(evalset), **Q)
    assert [r.kind for r in report.rows].count("unsteered") == 1


def test_rates_and_accuracy_by_hand(evalset, report):
    src = [i for i, s in enumerate(evalset) if s.meta["answer_type"] == "yes/no"]
    other = [i for i, s in enumerate(evalset) if s.meta["answer_type"] == "other"]
    assert src and other
    base_acc = sum(vqa_accuracy(report.unsteered.answers[i], evalset[i].answers) for i in other) / len(other)
    for r in report.rows:
        assert r.n_relevant == len(src)
        assert r.target_rate == sum(answer_type(r.answers[i]) == "number" for i in src) / len(src)
        acc = sum(vqa_accuracy(r.answers[i], evalset[i].answers) for i in other) / len(other)
        assert set(r.untouched_accuracy) == {"other"}
        assert r.untouched_accuracy["other"] == pytest.approx(acc)
        assert r.max_drop == pytest.approx(base_acc - acc)
        assert r.toward == sum(m > 0 for m in r.sample_moved) / len(src)
        assert all(r.sample_moved[i] == 0 for i in range(len(evalset)) if i not in src)
    strong = report.row(3, 2.0)
    assert strong.target_rate > report.unsteered.target_rate


def _hooked_margin(vlm, sample, layer, delta, ids):
    inputs = vlm.prepare([sample])

    def hook(_m, _i, out):
        return out + delta

    handle = vlm.layer_module(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = vlm.hf(**inputs).logits[0, -1].float()
    finally:
        handle.remove()
    lp = torch.log_softmax(logits, -1)
    src, tgt = ids
    return float(torch.logsumexp(lp[tgt], -1) - torch.logsumexp(lp[src], -1))


def test_margins_match_plain_torch(vlm, vec, evalset, report):
    words = report.info["margin_words"]
    tgt = first_token_ids(vlm, words[1])
    ids = ([i for i in first_token_ids(vlm, words[0]) if i not in tgt], tgt)
    for layer, i in ((2, 0), (2, 5), (2, 11), (3, 1), (3, 6)):  # 3: the last layer, read after its own edit
        r = report.row(layer, 0.75)
        want = _hooked_margin(vlm, evalset[i], layer, 0.75 * vec.vector, ids)
        assert r.sample_margin[i] == pytest.approx(want, abs=1e-4)
        base = _hooked_margin(vlm, evalset[i], layer, 0.0, ids)
        assert report.unsteered.sample_margin[i] == pytest.approx(base, abs=1e-4)
        d = want - base
        if d > report.threshold + 1e-3:
            assert r.sample_moved[i] == (1 if evalset[i].meta["answer_type"] == "yes/no" else 0)


def _nll_plain(vlm, sample, answer):
    ids = vlm.tokenizer.encode(answer, add_special_tokens=False)
    inputs = vlm.prepare([sample])
    s = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logits = vlm.hf(**inputs).logits[0].float()
    lp = torch.log_softmax(logits[s - 1 : s - 1 + len(ids)], -1)
    return -float(lp[torch.arange(len(ids)), torch.tensor(ids)].mean()), len(ids)


def test_fluency_matches_plain_torch(vlm, evalset, report):
    for r in (report.unsteered, report.row(2, 2.0), next(x for x in report.rows if x.kind == "prompt")):
        for i in (0, 3, 9):
            nll, n = _nll_plain(vlm, evalset[i], r.answers[i])
            assert r.sample_length[i] == n
            assert r.sample_nll[i] == pytest.approx(nll, abs=1e-4)
        assert r.nll == pytest.approx(sum(r.sample_nll) / len(r.sample_nll))
        assert r.length == sum(r.sample_length) / len(r.sample_length)
    assert report.row(2, 2.0).nll > report.unsteered.nll


def test_pareto_front(report):
    front = report.pareto()
    assert front

    def dominates(q, p):
        dq, dp = q.max_drop, p.max_drop
        return q.target_rate >= p.target_rate and dq <= dp and (q.target_rate > p.target_rate or dq < dp)

    for p in report.rows:
        beaten = any(dominates(q, p) for q in report.rows)
        assert (p in front) == (not beaten)
    assert [r.target_rate for r in front] == sorted(r.target_rate for r in front)


def test_table_and_dict(report):
    t = report.table()
    assert t.count("\n| ") == len(report.rows) + 1 and "L3 a=2" in t and "prompt: number" in t
    d = json.loads(json.dumps(report.to_dict()))
    assert len(d["rows"]) == len(report.rows) and d["target"]["kind"] == "answer_type"
    assert "answers" not in d["rows"][0] and "answers" in report.to_dict(samples=True)["rows"][0]


def test_save_load_round_trip(report, tmp_path):
    report.save(tmp_path / "sw")
    back = SweepReport.load(tmp_path / "sw")
    assert json.dumps(back.to_dict(samples=True), sort_keys=True) == json.dumps(
        report.to_dict(samples=True), sort_keys=True
    )
    assert back.target == report.target and back.layers == [2, 3] and back.alphas == list(ALPHAS)
    j = tmp_path / "sw" / "sweep.json"
    doc = json.loads(j.read_text())
    doc["doc"]["rows"][0]["kind"] = "bogus"
    j.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError):
        SweepReport.load(tmp_path / "sw")
    with pytest.raises(ArtifactError):
        SweepReport.load(tmp_path / "nothing")
    report.save(tmp_path / "sw2")
    for field, value in (("layer", "two"), ("alpha", [1]), ("answers", None), ("target_rate", "x")):
        j = tmp_path / "sw2" / "sweep.json"
        good = j.read_text()
        doc = json.loads(good)
        doc["doc"]["rows"][2][field] = value
        j.write_text(json.dumps(seal(doc)))  # a consistent checksum: the field check itself must refuse it
        with pytest.raises(ArtifactError):
            SweepReport.load(tmp_path / "sw2")
        j.write_text(good)
    assert SweepReport.load(tmp_path / "sw2").rows[2].answers == report.rows[2].answers


def test_target_answer_rate(vlm, evalset):
    vec = SteeringVector(torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0)), layer=3)
    rep = sweep(vlm, vec, evalset, target=TargetAnswer("yes", "no"), alphas=(1.0,), **Q)
    base, r = rep.unsteered, rep.steering[0]
    src = [i for i, a in enumerate(base.answers) if normalize_answer(a) == "yes"]
    assert base.target_rate == 0.0 and r.n_relevant == len(src)
    assert r.target_rate == sum(normalize_answer(r.answers[i]) == "no" for i in src) / len(src)
    assert set(r.untouched_accuracy) == {"number", "other"}


def test_caption_style_with_keep(vlm):
    caps = ns.zoo.dataset(5, task="caption", seed=204)
    keep = ns.zoo.dataset(6, task="vqa", seed=205)
    vec = SteeringVector(torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(1)), layer=1)
    rep = sweep(
        vlm, vec, caps, target=CaptionStyle("colors"), alphas=(0.0, 3.0), keep=keep, max_new_tokens=10, progress=False
    )
    base = rep.unsteered
    assert rep.keep_ids == [s.id for s in keep] and len(base.keep_answers) == len(keep)
    types = {s.meta["answer_type"] for s in keep}
    assert set(base.untouched_accuracy) == types and base.cider is not None
    for r in rep.rows:
        flags = [has_style(a, CaptionStyle("colors").keywords) for a in r.answers]
        assert r.target_rate == sum(flags) / len(caps)
        was = [has_style(a, CaptionStyle("colors").keywords) for a in base.answers]
        assert r.sample_moved == [
            (1 if f and not w else -1 if w and not f else 0) for f, w in zip(flags, was, strict=True)
        ]
        assert math.isnan(r.sample_margin[0])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"alphas": ()}, ArgumentError),
        ({"alphas": (1.0, float("nan"))}, ArgumentError),
        ({"alphas": (1.0, 1.0)}, ArgumentError),
        ({"alphas": ("1",)}, ArgumentError),
        ({"layers": [7]}, LayerOutOfRangeError),
        ({"layers": [2, 2]}, ArgumentError),
        ({"layers": ["2"]}, ArgumentError),
        ({"target": "yes/no"}, ArgumentError),
        ({"target": CaptionStyle("colors")}, ArgumentError),
        ({"samples": []}, EmptyInputError),
        ({"samples": "q"}, ArgumentError),
        ({"prompts": {"p": ""}}, ArgumentError),
        ({"prompts": {"unsteered": "x"}}, ArgumentError),
        ({"models": {"m": "shapes-colors"}}, ArgumentError),
        ({"fluency": "yes"}, ArgumentError),
        ({"batch_size": 0}, OptionsError),
        ({"remote": True}, ArgumentError),
        ({"threshold": -0.1}, ArgumentError),
        ({"threshold": float("inf")}, ArgumentError),
        ({"keep": [ns.Sample("k0", "is there a cat?")]}, ArgumentError),
        ({"keep": "k"}, ArgumentError),
        ({"remote": True, "fluency": False}, ArgumentError),
        ({"positions": "nowhere"}, NnshiftError),
        ({"vector_or_patch": torch.zeros(128)}, ArgumentError),
        ({"vector_or_patch": SteeringVector(torch.ones(5), layer=1)}, NnshiftError),
        ({"vector_or_patch": SteeringVector(torch.ones(128))}, SteeringError),
        ({"vector_or_patch": {2: SteeringVector(torch.ones(128))}, "layers": [3]}, SteeringError),
    ],
)
def test_validation_before_any_work(vlm, vec, evalset, change, error, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model call happened before validation")

    monkeypatch.setattr(vlm, "prepare", boom)
    kwargs = {"vector_or_patch": vec, "samples": evalset, "target": AnswerTypeTarget("yes/no", "number"), **Q}
    kwargs.update(change)
    with pytest.raises(error) as info:  # unwrapped: the tests' type hook would pre-empt nnshift's own checks
        inspect.unwrap(sweep)(vlm, kwargs.pop("vector_or_patch"), kwargs.pop("samples"), **kwargs)
    assert info.value.hint


def test_target_validation():
    with pytest.raises(ArgumentError):
        AnswerTypeTarget("yes/no", "colour")
    with pytest.raises(SteeringError):
        AnswerTypeTarget(["yes/no", "number"], "number")
    with pytest.raises(SteeringError):
        TargetAnswer("Yes", "yes.")
    with pytest.raises(ArgumentError):
        CaptionStyle("mood")
    with pytest.raises(ArgumentError):
        TargetAnswer("", "no")
    assert CaptionStyle("mood", ["happy"]).hit("a happy dog") and not CaptionStyle("mood", ["happy"]).hit("a dog")
    assert TargetAnswer("yes", ["no", "two"]).touched_types == {"yes/no", "number"}


def test_no_source_type_samples(vlm, vec):
    only_other = ns.zoo.dataset(4, task="vqa", answer_type="other", seed=3)
    with pytest.raises(EmptyInputError):
        sweep(vlm, vec, only_other, target=AnswerTypeTarget("yes/no", "number"), **Q)


def test_figures(report, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = report.plot_pareto()
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    heat = report.plot_heatmap("target_rate")
    im = heat.axes[0].images[0]
    data = im.get_array()
    assert data.shape == (2, len(ALPHAS))
    assert float(data[1, 2]) == pytest.approx(report.row(3, 2.0).target_rate)
    for metric in ("nll", "away", "accuracy:other", "max_drop"):
        report.plot_heatmap(metric)
    with pytest.raises(ArgumentError):
        report.plot_heatmap("accuracy:yes/no")
    plt.close("all")
