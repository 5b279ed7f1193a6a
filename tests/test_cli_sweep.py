"""`nnshift sweep` on the shapes world: what it writes equals the library's sweep; every bad option is one line."""

import json
import warnings

import pytest
import torch

import nnshift as ns
from nnshift import cli
from nnshift.cli.common import CliError
from nnshift.cli.sweep import parse_target
from nnshift.data import load_jsonl, save_jsonl
from nnshift.steering import AnswerTypeTarget, Calibration, CaptionStyle, SteeringVector, SweepReport, TargetAnswer

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-cli")
    data = save_jsonl(ns.zoo.dataset(10, task="vqa", seed=301), root / "vqa.jsonl", root / "images")
    keep = save_jsonl(ns.zoo.dataset(4, task="vqa", seed=302), root / "keep.jsonl", root / "images")
    vec = SteeringVector(torch.randn(128, generator=torch.Generator().manual_seed(0)), layer=3)
    vec.save(root / "vec")
    return root, data, keep, vec


def run_cli(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sweep_writes_what_the_library_computes(setup, capsys):
    root, data, _, vec = setup
    out = root / "o1"
    args = ["sweep", "--model", "shapes-base", "--data", data, "--vector", root / "vec", "--images", root / "images"]
    args += ["--target", "answer_type:yes/no->number", "--alphas", "0.5,2", "--layers", "2,3", "--max-new-tokens", "4"]
    args += ["--prompt", "Answer with a number.", "--baseline-model", "shapes-base", "--out", out]
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    for name in ("table.md", "pareto.png", "heatmap.png", "sweep.json", "sweep/sweep.json"):
        assert (out / name).exists(), name
    rep = SweepReport.load(out / "sweep")
    assert [r.kind for r in rep.rows] == ["unsteered", "prompt", "steer", "steer", "steer", "steer", "model"]
    samples = load_jsonl(data, root / "images")
    lib = ns.steering.sweep(
        ns.zoo.load("shapes-base"),
        vec,
        samples,
        target=AnswerTypeTarget("yes/no", "number"),
        alphas=(0.5, 2.0),
        layers=[2, 3],
        max_new_tokens=4,
        progress=False,
    )
    for layer in (2, 3):
        for a in (0.5, 2.0):
            assert rep.row(layer, a).answers == lib.row(layer, a).answers
            assert rep.row(layer, a).target_rate == lib.row(layer, a).target_rate
    assert (out / "table.md").read_text() == rep.table() and "L3 a=2" in stdout
    assert json.loads((out / "sweep.json").read_text())["model"] == "shapes-base"


def test_calibrate_from_the_cli(setup, capsys):
    root, data, keep, _ = setup
    args = ["sweep", "--model", "shapes-base", "--data", data, "--vector", root / "vec", "--images", root / "images"]
    args += ["--target", "answer:yes->no", "--alphas", "0.5,1", "--max-new-tokens", "4", "--keep", keep]
    args += ["--calibrate", "--max-untouched-drop", "0.05", "--calibration-seed", "3", "--refine", "0"]
    args += ["--out", root / "o2"]
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    calib = Calibration.load(root / "o2" / "calibration")
    assert calib.seed == 3 and calib.max_untouched_drop == 0.05 and "layer 3" in stdout
    assert len(calib.validation.keep_ids) == 2 and len(calib.held_out.keep_ids) == 2
    assert "refine" not in calib.validation.info and calib.validation.alphas == [0.5, 1.0]  # --refine 0 honoured


def test_parse_target():
    assert parse_target("answer_type:yes/no->number") == AnswerTypeTarget("yes/no", "number")
    assert parse_target("answer:yes->no,none") == TargetAnswer("yes", ["no", "none"])
    assert parse_target("style:colors") == CaptionStyle("colors")
    assert parse_target("style:mood", ["happy"]).keywords == ("happy",)
    for bad in ("yes->no", "answer:yes", "answer_type:yes/no->number,other", "colour:red->blue"):
        with pytest.raises(CliError):
            parse_target(bad)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--target", "answer:yes"], ["--target"]),
        (["--target", "answer:yes->no", "--keywords", "a,b"], ["--keywords"]),
        (["--target", "answer_type:yes/no->colour"], ["answer type"]),
        (["--target", "style:colors"], ["captions"]),
        (["--target", "answer:yes->no", "--layers", "9"], ["layer 9"]),
        (["--target", "answer:yes->no", "--alphas", "1,1"], ["repeat"]),
        (["--target", "answer:yes->no", "--alphas", "1,x"], ["--alphas"]),
        (["--target", "answer:yes->no", "--max-untouched-drop", "0.1"], ["--calibrate"]),
        (["--target", "answer:yes->no", "--calibrate", "--calibration-split", "1.5"], ["split"]),
        (["--target", "answer:yes->no", "--refine", "2"], ["--calibrate"]),
        (["--target", "answer:yes->no", "--calibrate", "--refine", "-1"], ["refine"]),
        (["--target", "answer:yes->no", "--calibrate", "--prompt", "x"], ["baselines"]),
        (["--target", "answer:yes->no", "--remote"], ["fluency"]),
        (["--target", "answer:yes->no", "--remote", "--no-fluency"], ["steerability"]),
        (["--target", "answer:yes->no", "--keep", "{data}x"], ["--keep"]),
        (["--target", "answer:yes->no", "--patch", "{root}/vec"], ["exactly one"]),
        (["--target", "answer:yes->no", "--baseline-model", "shapes-nothing"], ["shapes-nothing"]),
    ],
)
def test_bad_options_are_one_line_errors(setup, capsys, extra, words):
    root, data, _, _ = setup
    extra = [str(e).format(root=root, data=data) for e in extra]
    args = ["sweep", "--model", "shapes-base", "--data", data, "--vector", root / "vec", "--images", root / "images"]
    rc, _, err = run_cli(capsys, *args, *extra, "--max-new-tokens", "3", "--out", root / "bad")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
