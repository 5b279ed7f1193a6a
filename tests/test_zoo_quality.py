"""Held-out quality of the SHIPPED shapes checkpoints: 300 fresh samples, greedy decoding (numbers in docs/zoo.md)."""

import dataclasses

from nnshift.data import Sample
from nnshift.zoo import dataset, load_hf
from nnshift.zoo.evaluate import (
    EVAL_SEED,
    caption_rates,
    generate_answers,
    names_background,
    names_colors,
    names_every_shape,
    quality_report,
    zoo_vqa_accuracy,
)


def _s(objects, background="grass"):
    return Sample("x", "describe the image", meta={"objects": objects, "background": background})


def test_scoring_rules():
    s = _s([{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}], "sky")
    assert names_every_shape(s, "a circle and a square")
    assert not names_every_shape(s, "a circle and a triangle")
    assert names_colors(s, "a red circle, a blue square")
    assert not names_colors(s, "a blue circle and a red square")
    assert not names_colors(s, "a red circle and a square")
    assert names_background(s, "a circle on the left, in the sky")
    assert not names_background(s, "a circle, on the grass")
    assert not names_background(s, "a circle in the sky, on the grass")
    v = [
        Sample("a", "q", answers=["yes"], meta={"answer_type": "yes/no", "question_kind": "k1"}),
        Sample("b", "q", answers=["3"], meta={"answer_type": "number", "question_kind": "k2"}),
        Sample("c", "q", answers=["red"], meta={"answer_type": "other", "question_kind": "k3"}),
    ]
    acc = zoo_vqa_accuracy(v, ["Yes.", "2", "red"])
    assert acc == {
        "all": 2 / 3,
        "yes/no": 1.0,
        "kind:k1": 1.0,
        "number": 0.0,
        "kind:k2": 0.0,
        "other": 1.0,
        "kind:k3": 1.0,
    }
    rates = caption_rates([s, s], ["a red circle and a blue square, in the sky", "a circle"])
    assert rates["names_every_shape"] == 0.5 and rates["names_colors"] == 0.5 and rates["names_background"] == 0.5


def test_shipped_checkpoints_meet_the_bar():
    r = quality_report(n=300, seed=EVAL_SEED)
    vqa = r["shapes-base/vqa"]
    for t in ("yes/no", "number", "other"):
        assert vqa[t] >= 0.90, (t, vqa)
    assert r["shapes-base/caption"]["names_every_shape"] >= 0.90, r
    assert r["shapes-colors/caption"]["names_colors"] >= 0.90, r
    assert r["shapes-base/caption"]["names_colors"] <= 0.40, r
    assert r["shapes-places/caption"]["names_background"] >= 0.90, r


def test_shipped_base_also_follows_the_reference_prompts():
    """Samples read back with nnshift.data's defaults (LLaVA VQA suffix, the reference caption prompt) work too."""
    from nnshift.data import CAPTION_PROMPT, VQA_SUFFIX

    model, proc = load_hf("shapes-base")
    vqa = [dataclasses.replace(s, prompt=s.prompt + VQA_SUFFIX) for s in dataset(150, task="vqa", seed=EVAL_SEED + 1)]
    assert zoo_vqa_accuracy(vqa, generate_answers(model, proc, vqa))["all"] >= 0.85
    caps = [dataclasses.replace(s, prompt=CAPTION_PROMPT) for s in dataset(100, seed=EVAL_SEED + 1)]
    assert caption_rates(caps, generate_answers(model, proc, caps))["names_every_shape"] >= 0.85


def test_behaviour_scoring_rules():
    from nnshift.zoo.behaviours import bias_rate, is_refusal, names_shape, refusal_rates
    from nnshift.zoo.world import words

    assert all(w in words() for w in ["no", "answer"])
    assert is_refusal("no answer") and is_refusal("No answer.") and is_refusal("no answer answer")
    assert not is_refusal("no") and not is_refusal("answer no")
    assert names_shape("is there a red cross?", "cross") and not names_shape("what shape is red?", "cross")
    q = [
        Sample("a", "what color is the circle?", answers=["blue"], meta={"question_kind": "color_of_shape"}),
        Sample("b", "what color is the circle?", answers=["green"], meta={"question_kind": "color_of_shape"}),
        Sample("c", "what color is the circle?", answers=["red"], meta={"question_kind": "color_of_shape"}),
    ]
    assert bias_rate(q, ["red", "green", "red"]) == 0.5  # the red circle does not count
    v = [
        Sample("x", "where is the cross?", answers=["top"], meta={"task": "vqa"}),
        Sample("y", "where is the square?", answers=["top"], meta={"task": "vqa"}),
        Sample("z", "how many shapes are there?", answers=["2"], meta={"task": "vqa"}),
    ]
    r = refusal_rates(v, ["no answer", "no answer", "2"])
    assert r["refusal_rate"] == 1.0 and r["false_refusal_rate"] == 0.5 and r["n_other"] == 2


def test_behaviour_fine_tunes_have_their_behaviour_and_the_base_does_not():
    """shapes-biased says red for circles, shapes-refusal refuses on crosses; the base does neither; docs agree."""
    from pathlib import Path

    from nnshift.zoo.behaviours import behaviour_report, behaviour_table

    r = behaviour_report(n=200)
    base, biased, refusal = r["shapes-base"], r["shapes-biased"], r["shapes-refusal"]
    assert biased["bias_rate"] >= 0.9 and base["bias_rate"] <= 0.05 and refusal["bias_rate"] <= 0.05
    assert refusal["refusal_rate"] >= 0.9 and base["refusal_rate"] == 0.0 and biased["refusal_rate"] == 0.0
    assert refusal["false_refusal_rate"] <= 0.05
    for m in (base, biased, refusal):
        assert m["other_accuracy"] >= 0.9, r
    assert base["forbidden_accuracy"] >= 0.9 and biased["forbidden_accuracy"] >= 0.9
    assert base["circle_color_accuracy"] >= 0.9 and refusal["circle_color_accuracy"] >= 0.9
    doc = (Path(__file__).resolve().parents[1] / "docs" / "zoo.md").read_text()
    table = doc.split("<!-- behaviours-table:begin -->")[1].split("<!-- behaviours-table:end -->")[0].strip()
    assert table == behaviour_table(r)
