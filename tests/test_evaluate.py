"""Evaluation: answer normalisation, official and simplified VQA accuracy, answer types, steering and caption reports."""

import json
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnshift as ns
from nnshift.errors import DataFormatError, EmptyInputError
from nnshift.evaluate import (
    answer_counts,
    answer_type,
    caption_report,
    caption_style_rates,
    cider_d,
    compare_captions,
    compare_vqa,
    count_changed,
    evaluate_vqa,
    has_style,
    normalize_answer,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("  Two dogs!\n", "2 dogs"),
        ("the red one", "red 1"),
        ("A man's hat", "man's hat"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("dont know", "don't know"),
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("none", "0"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_answer_type():
    assert [answer_type(a) for a in ["Yes.", "no", "3", "two", "red", "", "10.5"]] == [
        "yes/no",
        "yes/no",
        "number",
        "number",
        "other",
        "other",
        "number",
    ]
    assert answer_type("red", types={"red": "color"}) == "color"


def _official_brute_force(pred, refs):
    """The VQA definition written out: the mean over the 10 choose-9 annotator subsets of min(1, matches / 3)."""
    p = normalize_answer(pred)
    subsets = list(combinations(range(len(refs)), len(refs) - 1))
    return sum(min(1.0, sum(normalize_answer(refs[i]) == p for i in sub) / 3) for sub in subsets) / len(subsets)


def test_vqa_accuracy_official_and_simplified():
    refs = ["2"] * 2 + ["3"] * 8
    assert vqa_accuracy("two", refs, official=False) == pytest.approx(2 / 3)
    # official: the 2 subsets that leave out a "2" annotator keep 1 match, the 8 others keep 2
    assert vqa_accuracy("2", refs) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("3", refs) == 1.0 and vqa_accuracy("4", refs) == 0.0
    # exactly 3 matches: simplified gives 1, official slightly less
    refs3 = ["cat"] * 3 + ["dog"] * 7
    assert vqa_accuracy("cat", refs3, official=False) == 1.0
    assert vqa_accuracy("cat", refs3) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    # single-reference datasets: exact match
    assert vqa_accuracy("Yes!", ["yes"]) == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0
    assert vqa_accuracy("x", []) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["yes", "no", "2", "two", "red", "Red."]), min_size=3, max_size=10),
    st.sampled_from(["yes", "2", "red", "blue"]),
)
def test_vqa_accuracy_matches_the_definition(refs, pred):
    got = vqa_accuracy(pred, refs)
    assert got == pytest.approx(_official_brute_force(pred, refs))
    assert 0.0 <= got <= 1.0
    assert got <= vqa_accuracy(pred, refs, official=False) + 1e-12


def _vqa_samples():
    return [
        ns.Sample(id="a", prompt="is it?", answers=["yes"] * 10, meta={"answer_type": "yes/no"}),
        ns.Sample(id="b", prompt="is it?", answers=["no"] * 10, meta={"answer_type": "yes/no"}),
        ns.Sample(id="c", prompt="how many?", answers=["2"] * 10, meta={"answer_type": "number"}),
        ns.Sample(id="d", prompt="color?", answers=["white"] * 10, meta={"answer_type": "other"}),
        ns.Sample(id="e", prompt="color?", answers=["black"]),  # type from its reference answer
    ]


def test_evaluate_vqa():
    rep = evaluate_vqa(["Yes", "yes", "two", "white", "red"], _vqa_samples())
    assert rep.n == 5 and rep.accuracy == pytest.approx(3 / 5)
    assert rep.accuracy_by_type == {"yes/no": 0.5, "number": 1.0, "other": 0.5}
    assert rep.macro_accuracy == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert rep.samples_by_type == {"yes/no": 2, "number": 1, "other": 2}
    assert rep.predicted_types == {"yes/no": 2, "number": 1, "other": 2}
    assert rep.predicted_type_rates["yes/no"] == pytest.approx(0.4)
    assert rep.answer_counts == {"yes": 2, "2": 1, "white": 1, "red": 1}
    d = json.loads(json.dumps(rep.to_dict()))
    assert "scores" not in d and d["accuracy_by_type"]["number"] == 1.0
    with pytest.raises(DataFormatError):
        evaluate_vqa(["yes"], _vqa_samples())
    with pytest.raises(EmptyInputError):
        evaluate_vqa([], [])


def test_compare_vqa_yes_to_no():
    samples = _vqa_samples()
    before = ["yes", "no", "2", "white", "black"]
    after = ["no", "no", "2", "white", "black"]
    rep = compare_vqa(before, after, samples, source="yes", target="no")
    assert rep.source_counts == (1, 0) and rep.target_counts == (1, 2)
    assert rep.turned == 1  # the one "yes" became "no"; the "no" that stayed "no" does not count
    assert rep.changed == 1 and rep.changed_rate == pytest.approx(0.2)
    # yes/no is touched (the source and target's type); number and other are untouched and keep their accuracy
    assert set(rep.untouched_accuracy) == {"number", "other"}
    assert rep.untouched_accuracy["other"] == {"before": 1.0, "after": 1.0, "delta": 0.0}
    assert rep.before.accuracy_by_type["yes/no"] == 1.0 and rep.after.accuracy_by_type["yes/no"] == 0.5
    assert rep.type_rates["yes/no"] == (0.4, 0.4)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["target_counts"] == {"before": 1, "after": 2}
    # answer-type steering: yes/no -> number
    typed = compare_vqa(before, ["3", "no", "2", "white", "black"], samples, touched=["yes/no", "number"])
    assert typed.type_rates["number"] == (0.2, 0.4) and set(typed.untouched_accuracy) == {"other"}


def test_counts_and_changes():
    assert answer_counts(["Yes", "yes.", "no"]) == {"yes": 2, "no": 1}
    assert count_changed(["Yes", "two"], ["yes.", "3"]) == 1
    assert count_changed(["Yes"], ["yes"], normalize=False) == 1
    with pytest.raises(DataFormatError):
        count_changed(["a"], ["a", "b"])


def test_caption_styles():
    caps = ["A red square on the grass.", "a circle", "The BLUE sky above a beach", "Light-blue dot", "bored"]
    assert has_style("A Red car", ["red"]) and not has_style("bored cat", ["red"])
    assert has_style("in the living  room", ["living room"])
    rates = caption_style_rates(caps, ["colors", "places"])
    assert rates == {"colors": pytest.approx(3 / 5), "places": pytest.approx(2 / 5)}
    custom = caption_report(caps, {"shapes": ["square", "circle", "dot"]})
    assert custom.counts == {"shapes": 3} and custom.n == 5
    rep = compare_captions(["a circle", "a square"], ["a red circle", "a square"], ["colors"])
    assert rep.before.rates["colors"] == 0.0 and rep.after.rates["colors"] == 0.5 and rep.changed == 1
    assert json.loads(json.dumps(rep.to_dict()))["after"]["counts"] == {"colors": 1}
    assert rep.cider is None
    refs = [["a red circle", "a small red circle"], ["a square", "a big square"]]
    rep = compare_captions(["a circle", "a square"], ["a red circle", "a square"], ["colors"], references=refs)
    before, after = rep.cider
    assert after > before  # the steered caption now matches its references
    assert after == pytest.approx(cider_d(["a red circle", "a square"], refs).score)
    assert json.loads(json.dumps(rep.to_dict()))["cider"] == [pytest.approx(before), pytest.approx(after)]
    with pytest.raises(DataFormatError):
        compare_captions(["a circle"], ["a square"], references=[["a"], ["b"]])
    with pytest.raises(DataFormatError):
        caption_style_rates(caps, ["fonts"])
    with pytest.raises(EmptyInputError):
        caption_style_rates([])


def test_answer_rules_live_in_the_low_module_and_are_reexported():
    import nnshift.answers as answers
    import nnshift.evaluate as ev

    assert ev.normalize_answer is answers.normalize_answer and ev.answer_type is answers.answer_type
    assert ev.ANSWER_TYPES == answers.ANSWER_TYPES == ("yes/no", "number", "other")
    assert answers.normalize_answer("  Two dogs!\n") == "2 dogs" and answers.answer_type("Three.") == "number"
    # the low module imports nothing of nnshift's evaluation (steering may import it)
    src = Path(answers.__file__).read_text()
    assert "import nnshift" not in src and "from nnshift" not in src
    vec = Path(ns.steering.vectors.__file__).read_text()
    assert "from nnshift.answers import" in vec and "from nnshift.evaluate import" not in vec


def test_comparison_names_and_former_aliases():
    import nnshift.evaluate as ev

    samples = [ns.Sample(f"s{i}", "q?", answers=["yes"], meta={"answer_type": "yes/no"}) for i in range(2)]
    rep = ev.compare_vqa(["yes", "yes"], ["no", "yes"], samples, source="yes", target="no")
    assert type(rep) is ev.VQAComparison and ev.SteeringReport is ev.VQAComparison
    assert rep.turned == 1 and rep.changed == 1
    cap = ev.compare_captions(["a red circle"], ["a circle"], styles=["colors"])
    assert type(cap) is ev.CaptionComparison and ev.CaptionSteeringReport is ev.CaptionComparison
    assert cap.before.rates["colors"] == 1.0 and cap.after.rates["colors"] == 0.0


def test_zoo_evaluate_names_do_not_shadow_nnshift_evaluate():
    import warnings

    import nnshift.zoo.evaluate as zev

    for old in ("normalize_answer", "generate", "vqa_accuracy"):
        assert old not in zev.__all__
    assert zev.normalize_zoo_answer("Two, dogs!") == "two dogs"  # the zoo's rule: words only, no number mapping
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert zev.vqa_accuracy is zev.zoo_vqa_accuracy
    assert any(issubclass(x.category, DeprecationWarning) for x in w)
