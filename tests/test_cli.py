"""The `nnshift` command: errors are one line with a non-zero exit; an interrupted capture resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import nnshift as ns
from nnshift.data import save_jsonl
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.store import ActivationStore, load_activations

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}


def nnshift(*args, check=False, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "nnshift", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = build_tiny("llava", root / "llava")
    samples = [ns.Sample(id=f"s{i}", prompt="what color is the circle", image=tiny_image(i)) for i in range(96)]
    data = save_jsonl(samples, root / "data.jsonl", root / "images")
    return root, model, data


@pytest.mark.parametrize(
    "args",
    [
        ["capture", "--model", "{model}", "--data", "{root}/missing.jsonl", "--out", "{root}/o1"],
        ["capture", "--model", "{root}/no-model", "--data", "{data}", "--out", "{root}/o2"],
        ["capture", "--model", "{model}", "--data", "{data}", "--layer", "99", "--out", "{root}/o3"],
        ["concepts", "--acts", "{root}/missing", "--out", "{root}/d"],
        ["concepts", "--acts", "{root}", "--out", "{root}/d"],
        [
            "shift",
            "--acts-a",
            "{root}/a",
            "--acts-b",
            "{root}/b",
            "--dico-a",
            "{root}/x",
            "--dico-b",
            "{root}/y",
            "--out",
            "{root}/s",
        ],
        ["steer", "--model", "{model}", "--data", "{data}", "--out", "{root}/st"],
        ["evaluate", "--answers", "{data}"],
        ["evaluate", "--answers", "{root}/none.jsonl"],
        ["report", "--run", "{root}", "--out", "{root}/rep"],
    ],
)
def test_bad_inputs_give_one_line_errors(setup, args):
    root, model, data = setup
    res = nnshift(*[a.format(root=root, model=model, data=data) for a in args])
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], res.stderr


def test_help_explains_every_option_with_an_example():
    for cmd in ["demo", "capture", "concepts", "shift", "steer", "evaluate", "report"]:
        res = nnshift(cmd, "--help")
        assert res.returncode == 0 and "example:" in res.stdout and "nnshift " + cmd in res.stdout


def test_capture_interrupted_by_ctrl_c_resumes(setup):
    root, model, data = setup
    out = root / "cap"
    args = [
        "capture",
        "--model",
        model,
        "--data",
        data,
        "--layer",
        "-1",
        "--positions",
        "generated",
        "--reduce",
        "mean",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--out",
        out,
    ]
    full = nnshift(*args[:-1], root / "full")
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnshift", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = out / "manifest.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the capture finished before the interrupt arrived")
    assert proc.returncode == 130 and "resume" in err and "Traceback" not in err
    stored = len(ActivationStore.open(out).done_ids)
    assert 0 < stored < 96
    again = nnshift(*args)
    assert again.returncode == 0, again.stderr
    a, b = load_activations(out), load_activations(root / "full")
    assert a.ids == b.ids
    import torch

    assert torch.equal(a.tensor, b.tensor)


def test_concepts_and_report_from_the_cli(setup):
    root, model, data = setup
    cap = root / "cap2"
    assert nnshift("capture", "--model", model, "--data", data, "--out", cap).returncode == 0
    res = nnshift("concepts", "--acts", cap, "--k", "3", "--model", model, "--out", root / "dico")
    assert res.returncode == 0, res.stderr
    assert "concept  0" in res.stdout
    d = ns.concepts.ConceptDictionary.load(root / "dico")
    assert d.k == 3


def test_evaluate_captions_reports_style_and_cider(tmp_path):
    refs = [["a red circle", "a small red circle"], ["a blue square", "a square"]]
    rows = lambda answers: "\n".join(  # noqa: E731
        json.dumps({"id": f"c{i}", "answer": a, "answers": r})
        for i, (a, r) in enumerate(zip(answers, refs, strict=True))
    )
    (tmp_path / "before.jsonl").write_text(rows(["a circle", "a square"]))
    (tmp_path / "after.jsonl").write_text(rows(["a red circle", "a blue square"]))
    res = nnshift("evaluate", "--answers", tmp_path / "after.jsonl", "--baseline", tmp_path / "before.jsonl")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["after"]["rates"]["colors"] == 1.0 and out["before"]["rates"]["colors"] == 0.0
    before, after = out["cider"]
    assert after > before
    assert after == pytest.approx(ns.evaluate.cider_d(["a red circle", "a blue square"], refs).score)
    single = json.loads(nnshift("evaluate", "--answers", tmp_path / "after.jsonl").stdout)
    assert single["cider"] == pytest.approx(after)
