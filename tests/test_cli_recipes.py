"""The paper's recipes from the command line on the zoo: every model option honoured, every vector kind, figures, report."""

import argparse
import json

import pytest
import torch

import nnshift as ns
from nnshift import cli
from nnshift.cli.loaders import load_model
from nnshift.data import save_jsonl
from nnshift.store import load_activations

COLORS_ADAPTER = ns.zoo.adapter_path("shapes-colors")


def run_ok(*args):
    rc = cli.main([str(a) for a in args])
    assert rc == 0, args
    return rc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    vqa = ns.zoo.dataset(16, task="vqa", seed=3)
    save_jsonl(vqa, root / "vqa.jsonl", root / "images")
    captions = ns.zoo.dataset(10, task="caption", style="colors", seed=4)
    save_jsonl(captions, root / "captions.jsonl", root / "images")
    return root


def model_args(**kw):
    return argparse.Namespace(**{"model": "shapes-base", "lora": None, "dtype": "auto", "device": "auto"} | kw)


def test_zoo_names_honour_lora_dtype_and_device():
    base = load_model(model_args())
    assert base.lora is None and base.hf.dtype == torch.float32  # auto = the checkpoint's dtype
    with_lora = load_model(model_args(lora=str(COLORS_ADAPTER)))
    assert with_lora.lora == str(COLORS_ADAPTER)
    half = load_model(model_args(dtype="bfloat16", device="cpu"))
    assert half.hf.dtype == torch.bfloat16
    assert next(half.hf.parameters()).device.type == "cpu"


@pytest.fixture(scope="module")
def caps(root):
    """Captions captured at layers -1 and 1 by shapes-base, shapes-base + the colors LoRA, and shapes-colors."""
    common = ["--data", root / "captions.jsonl", "--layer", "-1,1", "--batch-size", "4"]
    run_ok("capture", "--model", "shapes-base", *common, "--out", root / "cap-base")
    run_ok("capture", "--model", "shapes-base", "--lora", COLORS_ADAPTER, *common, "--out", root / "cap-lora")
    run_ok("capture", "--model", "shapes-colors", *common, "--out", root / "cap-colors")
    return root


def test_capture_with_a_zoo_name_and_lora_captures_the_fine_tune(caps):
    root = caps
    for layer in (3, 1):  # -1 is layer 3 of the 4-layer zoo LLaVA
        base = load_activations(root / "cap-base", layer)
        lora = load_activations(root / "cap-lora", layer)
        colors = load_activations(root / "cap-colors", layer)
        assert lora.ids == base.ids and len(lora) == 10
        assert not torch.allclose(lora.tensor, base.tensor, atol=1e-4)
        torch.testing.assert_close(lora.tensor, colors.tensor)
    key = json.loads((root / "cap-lora" / "manifest.json").read_text())["key"]
    assert key["lora"] == str(COLORS_ADAPTER) and key["layers"] == [1, 3]
    assert json.loads((root / "cap-base" / "manifest.json").read_text())["key"]["lora"] is None


def test_generate_writes_the_models_answers_and_evaluate_scores_them(root, capsys):
    run_ok(
        "generate",
        "--model",
        "shapes-base",
        "--data",
        root / "vqa.jsonl",
        "--max-new-tokens",
        "4",
        "--out",
        root / "gen",
    )
    rows = [json.loads(line) for line in (root / "gen" / "answers.jsonl").read_text().splitlines()]
    samples = ns.data.load_jsonl(root / "vqa.jsonl")
    expected = ns.generate(ns.zoo.load("shapes-base"), samples, max_new_tokens=4, progress=False)
    assert [r["id"] for r in rows] == [s.id for s in samples]
    assert [r["answer"] for r in rows] == expected
    capsys.readouterr()
    run_ok("evaluate", "--answers", root / "gen")
    result = json.loads(capsys.readouterr().out)
    refs = [ns.evaluate.vqa_accuracy(a, s.answers) for a, s in zip(expected, samples, strict=True)]
    assert result["accuracy"] == pytest.approx(sum(refs) / len(refs))


def test_answer_types_filter_jsonl_rows(root):
    run_ok(
        "generate", "--model", "shapes-base", "--data", root / "vqa.jsonl", "--answer-types", "yes/no",
        "--max-new-tokens", "2", "--out", root / "gen-yn.jsonl",
    )  # fmt: skip
    rows = [json.loads(line) for line in (root / "gen-yn.jsonl").read_text().splitlines()]
    want = [s.id for s in ns.data.load_jsonl(root / "vqa.jsonl") if s.meta["answer_type"] == "yes/no"]
    assert [r["id"] for r in rows] == want and want


@pytest.fixture(scope="module")
def acts(root):
    """A store with the model's own answers (generated positions, averaged) and a 3-concept dictionary on it."""
    run_ok(
        "capture", "--model", "shapes-base", "--data", root / "vqa.jsonl", "--layer", "-1", "--positions", "generated",
        "--reduce", "mean", "--max-new-tokens", "3", "--out", root / "acts",
    )  # fmt: skip
    run_ok("concepts", "--acts", root / "acts", "--k", "3", "--out", root / "dico")
    for t, name in (("yes/no", "yn"), ("number", "num")):
        run_ok(
            "capture", "--model", "shapes-base", "--data", root / "vqa.jsonl", "--answer-types", t, "--layer", "3",
            "--out", root / name,
        )  # fmt: skip
    return root


STEER = ["--model", "shapes-base", "--max-new-tokens", "3", "--alpha", "2", "--layer", "3"]


def steered(out):
    return [json.loads(line)["answer"] for line in (out / "answers.jsonl").read_text().splitlines()]


def test_steer_coarse_equals_the_library_and_a_saved_vector_replays_it(acts):
    root = acts
    data = ["--data", root / "vqa.jsonl", "--limit", "6"]
    run_ok("steer", *STEER, *data, "--source", root / "yn", "--target", root / "num", "--out", root / "steer-coarse")
    vec = ns.steering.coarse(load_activations(root / "yn"), load_activations(root / "num"))
    samples = ns.data.load_jsonl(root / "vqa.jsonl")[:6]
    expected = ns.steer(ns.zoo.load("shapes-base"), samples, vec.patch(2.0, "all", layer=3), max_new_tokens=3)
    assert steered(root / "steer-coarse") == expected
    saved = root / "steer-coarse" / "vector"
    assert ns.steering.SteeringVector.load(saved).method == "coarse"
    run_ok("steer", *STEER, *data, "--vector", saved, "--out", root / "steer-saved")
    assert steered(root / "steer-saved") == expected
    settings = json.loads((root / "steer-coarse" / "steer.json").read_text())
    assert settings["kind"] == "coarse" and settings["layer"] == 3 and settings["alpha"] == 2.0


@pytest.mark.parametrize(
    ("extra", "method"),
    [
        (["--acts", "{root}/acts", "--source-answer", "yes", "--target-answer", "no"], "target_answer"),
        (["--acts", "{root}/acts", "--source-type", "yes/no", "--target-type", "number"], "answer_type"),
        (["--concepts", "{root}/dico", "--fine", "0,2"], "fine"),
    ],
)
def test_steer_builds_every_vector_kind(acts, extra, method):
    root = acts
    out = root / f"steer-{method}"
    args = [a.format(root=root) for a in extra]
    run_ok("steer", *STEER, "--data", root / "vqa.jsonl", "--limit", "4", *args, "--out", out)
    vec = ns.steering.SteeringVector.load(out / "vector")
    assert vec.method == method and vec.layer == 3
    if method == "fine":
        dico = ns.concepts.ConceptDictionary.load(root / "dico")
        torch.testing.assert_close(vec.vector, dico.concepts[2].float() - dico.concepts[0].float())
    assert len(steered(out)) == 4


def test_steer_by_impact_keeps_the_best_pair(acts):
    root = acts
    out = root / "steer-impact"
    run_ok(
        "steer", *STEER, "--data", root / "vqa.jsonl", "--limit", "4", "--concepts", root / "dico", "--by-impact",
        "--max-targets", "0", "--out", out,
    )  # fmt: skip
    ranked = json.loads((out / "impact.json").read_text())
    assert ranked and all(ranked[i]["score"] >= ranked[i + 1]["score"] for i in range(len(ranked) - 1))
    vec = ns.steering.SteeringVector.load(out / "vector")
    assert vec.method == "fine" and vec.info["concepts"] == ranked[0]["key"]


def test_shift_writes_figures_and_report_collects_every_run(caps, acts, tmp_path):
    root = caps
    for name in ("base", "colors"):
        run_ok("concepts", "--acts", root / f"cap-{name}", "--layer", "3", "--k", "3", "--out", root / f"dico-{name}")
    # the shift needs one layer per store: capture it again at layer 3 only
    for model, name in (("shapes-base", "s-base"), ("shapes-colors", "s-colors")):
        run_ok("capture", "--model", model, "--data", root / "captions.jsonl", "--layer", "3", "--out", root / name)
    run_ok(
        "shift", "--acts-a", root / "s-base", "--acts-b", root / "s-colors", "--concepts-a", root / "dico-base",
        "--concepts-b", root / "dico-colors", "--out", root / "shift",
    )  # fmt: skip
    for fig in ("shift_recovery", "shift_similarity", "shift_gain_vs", "shift_dynamics", "shift_alpha_sweep"):
        assert (root / "shift" / f"{fig}.png").stat().st_size > 1000, fig
    summary = json.loads((root / "shift" / "summary.json").read_text())
    assert summary["summary"]["k"] == 3 and len(summary["alpha_sweep"]["alphas"]) == 7
    run_ok("generate", "--model", "shapes-base", "--data", root / "vqa.jsonl", "--limit", "2", "--out", root / "gen")
    run_ok(
        "steer", *STEER, "--data", root / "vqa.jsonl", "--limit", "2", "--source", root / "yn", "--target",
        root / "num", "--out", root / "steer-report",
    )  # fmt: skip
    run_ok("report", "--run", root, "--out", tmp_path / "rep")
    html = (tmp_path / "rep" / "index.html").read_text()
    for section in ("capture: s-base", "concepts: dico-base", "shift: shift", "steer: steer-report", "generate: gen"):
        assert section in html, section
    assert (tmp_path / "rep" / "shift-shift_recovery.png").exists()
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["shift:shift"]["k"] == 3 and results["capture:cap-lora"]["lora"] == str(COLORS_ADAPTER)


def test_store_verify_and_repair(caps):
    root = caps
    if not hasattr(ns.store, "verify_store") or not hasattr(ns.store, "repair_store"):
        pytest.skip("nnshift.store.verify_store / repair_store are not in this version")
    assert cli.main(["store", "verify", str(root / "cap-base")]) == 0
    shard = sorted(p for p in (root / "cap-base").iterdir() if p.name != "manifest.json" and p.is_file())[0]
    broken = root / "cap-broken"
    import shutil

    shutil.copytree(root / "cap-base", broken)
    (broken / shard.name).write_bytes(b"garbage")
    assert cli.main(["store", "verify", str(broken)]) == 1
    assert cli.main(["store", "repair", str(broken)]) == 0
    assert cli.main(["store", "verify", str(broken)]) == 0


def test_steer_applies_a_saved_patch(acts, tmp_path):
    if not (hasattr(ns.steering.Patch, "save") and hasattr(ns.steering.Patch, "load")):
        pytest.skip("Patch.save / Patch.load are not in this version")
    root = acts
    vec = ns.steering.coarse(load_activations(root / "yn"), load_activations(root / "num"))
    patch = vec.patch(2.0, "all", layer=3)
    patch.save(tmp_path / "patch")
    data = ["--data", root / "vqa.jsonl", "--limit", "3"]
    run_ok(
        "steer",
        "--model",
        "shapes-base",
        "--max-new-tokens",
        "3",
        *data,
        "--patch",
        tmp_path / "patch",
        "--out",
        tmp_path / "o",
    )
    samples = ns.data.load_jsonl(root / "vqa.jsonl")[:3]
    assert steered(tmp_path / "o") == ns.steer(ns.zoo.load("shapes-base"), samples, patch, max_new_tokens=3)
