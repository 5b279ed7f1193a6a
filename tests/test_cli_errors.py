"""The `nnshift` command on bad input: one line with a hint on stderr, exit 2, no traceback; Ctrl-C exits 130."""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nnshift as ns
from nnshift import cli
from nnshift.cli.app import build_parser, prepare_argv
from nnshift.cli.interrupt import INTERRUPTED

ROOT = str(Path(ns.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "PYTHONPATH": ROOT}


def run_cli(capsys, *args):
    """``nnshift.cli.main`` in-process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    assert lines[0].rstrip().endswith(")"), f"no hint in {lines[0]!r}"  # "message (hint)"
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"id": f"q{i}", "prompt": "is there a circle?", "answers": ["yes"]} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def parse(*argv):
    parser = build_parser()
    return parser.parse_args(prepare_argv(parser, [str(a) for a in argv]))


# ---------------------------------------------------------------------------- layers and numbers


@pytest.mark.parametrize(("text", "layers"), [("-1,1", [-1, 1]), ("-1", [-1]), ("2", [2]), (" 0, -2 ", [0, -2])])
def test_layer_with_a_space_accepts_negative_lists(text, layers):
    args = parse("capture", "--model", "m", "--data", "d", "--layer", text, "--out", "o")
    assert args.layer == layers
    assert parse("capture", "--model", "m", "--data", "d", f"--layer={text}", "--out", "o").layer == layers


def test_negative_values_of_other_options_and_options_are_not_swallowed():
    args = parse("steer", "--model", "m", "--data", "d", "--vector", "v", "--alpha", "-1.5e0", "--out", "o")
    assert args.alpha == -1.5
    args = parse("steer", "--model", "m", "--data", "d", "--vector", "v", "--layer", "-2", "--out", "o")
    assert args.layer == -2
    with pytest.raises(cli.CliError, match="expected one argument"):
        parse("capture", "--model", "m", "--data", "d", "--token", "--variants", "--out", "o")


@pytest.mark.parametrize("layer", ["1.5", "", "a", "1,,2", "1,1", "-", "1;2", "true"])
def test_bad_layers_are_refused(capsys, data, tmp_path, layer):
    rc, _, err = run_cli(
        capsys, "capture", "--model", "shapes-base", "--data", data, "--layer", layer, "--out", tmp_path / "o"
    )
    one_line_error(rc, err, "--layer")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch-size", "0"),
        ("--batch-size", "-1"),
        ("--max-new-tokens", "0"),
        ("--shard-size", "0"),
        ("--limit", "-1"),
        ("--batch-size", "2.5"),
    ],
)
def test_counts_must_be_positive(capsys, data, tmp_path, option, value):
    args = ["capture", "--model", "shapes-base", "--data", data, option, value, "--out", tmp_path / "o"]
    rc, _, err = run_cli(capsys, *args)
    one_line_error(rc, err, option)


@pytest.mark.parametrize(("option", "value"), [("--alpha", "nan"), ("--alpha", "inf"), ("--alpha", "x")])
def test_alpha_must_be_finite(capsys, data, tmp_path, option, value):
    args = ["steer", "--model", "shapes-base", "--data", data, "--vector", tmp_path, option, value, "--out", tmp_path]
    one_line_error(*run_cli(capsys, *args)[::2], option)


def test_k_zero_refused(capsys, tmp_path):
    one_line_error(*run_cli(capsys, "concepts", "--acts", tmp_path, "--k", "0", "--out", tmp_path / "d")[::2], "--k")


# ---------------------------------------------------------------------------- model options


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_device_cuda_without_a_gpu_is_refused_before_any_work(capsys, data, tmp_path):
    rc, _, err = run_cli(
        capsys, "capture", "--model", "shapes-base", "--data", data, "--device", "cuda", "--out", tmp_path / "o"
    )
    one_line_error(rc, err, "--device cuda", "GPU")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [("--device", "tpu", ["--device"]), ("--dtype", "int8", ["--dtype"]), ("--lora", "/no/such/adapter", ["--lora"])],
)
def test_bad_model_options(capsys, data, tmp_path, option, value, words):
    rc, _, err = run_cli(capsys, "generate", "--model", "shapes-base", "--data", data, option, value, "--out", tmp_path)
    one_line_error(rc, err, *words)


def test_zoo_model_refuses_remote_and_a_second_adapter(capsys, data, tmp_path):
    rc, _, err = run_cli(capsys, "generate", "--model", "shapes-base", "--data", data, "--remote", "--out", tmp_path)
    one_line_error(rc, err, "NDIF")
    adapter = ns.zoo.adapter_path("shapes-places")
    rc, _, err = run_cli(
        capsys, "generate", "--model", "shapes-colors", "--lora", adapter, "--data", data, "--out", tmp_path
    )
    one_line_error(rc, err, "shapes-colors", "adapter")


# ---------------------------------------------------------------------------- evaluate / report inputs


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["not a text file"]),
        (b'["yes", "no"]\n', ["line 1", "list"]),
        (b'{"id": "a", "answer": "yes"}\n{"id": "b", "prompt": "q"}\n', ["line 2", "no 'answer'"]),
        (b'{"id": "a", "answer": 3}\n', ["not text"]),
        (b'{"id": "a", "answer": "yes", "answers": "yes"}\n', ["list of strings"]),
        (b"null\n", ["NoneType"]),
        (b"\n\n", ["no answers"]),
        (b'{"id": "a", "answer": "yes"}\n{"id": "a", "answer": "no"}\n', ["twice"]),
        (b"{not json\n", ["not JSON"]),
    ],
)
def test_evaluate_refuses_broken_answers(capsys, tmp_path, content, words):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(content)
    one_line_error(*run_cli(capsys, "evaluate", "--answers", path)[::2], *words)


def test_evaluate_baseline_must_cover_the_samples(capsys, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "a", "answer": "yes"}\n{"id": "b", "answer": "no"}\n')
    (tmp_path / "b.jsonl").write_text('{"id": "a", "answer": "yes"}\n')
    args = ["evaluate", "--answers", tmp_path / "a.jsonl", "--baseline", tmp_path / "b.jsonl"]
    one_line_error(*run_cli(capsys, *args)[::2], "--baseline lacks 1")


@pytest.mark.parametrize(
    ("content", "words"), [("[1, 2]", ["list"]), ("null", ["NoneType"]), ("{oops", ["not valid JSON"])]
)
def test_report_refuses_a_results_json_that_is_not_an_object(capsys, tmp_path, content, words):
    (tmp_path / "results.json").write_text(content)
    one_line_error(*run_cli(capsys, "report", "--run", tmp_path, "--out", tmp_path / "rep")[::2], *words)


def test_report_on_a_folder_without_runs(capsys, tmp_path):
    (tmp_path / "sub").mkdir()
    one_line_error(*run_cli(capsys, "report", "--run", tmp_path, "--out", tmp_path / "rep")[::2], "no run output")


@pytest.mark.parametrize(("file", "content"), [("vector.json", "[]"), ("vector.json", "null"), ("vector.json", "{}")])
def test_broken_saved_vector_is_a_clear_error(capsys, data, tmp_path, file, content):
    vec = tmp_path / "vec"
    ns.steering.SteeringVector(torch.ones(4), layer=1).save(vec)
    (vec / file).write_text(content)
    args = ["steer", "--model", "shapes-base", "--data", data, "--vector", vec, "--out", tmp_path / "o"]
    line = one_line_error(*run_cli(capsys, *args)[::2])
    assert "vec" in line


@pytest.mark.parametrize("content", ["[]", "null", '{"format_version": 1}'])
def test_broken_saved_dictionary_is_a_clear_error(capsys, data, tmp_path, content):
    dico = tmp_path / "dico"
    ns.concepts.fit(torch.randn(12, 4), k=2, method="kmeans").save(dico)
    (dico / "concepts.json").write_text(content)
    args = [
        "steer",
        "--model",
        "shapes-base",
        "--data",
        data,
        "--concepts",
        dico,
        "--fine",
        "0,1",
        "--out",
        tmp_path / "o",
    ]
    one_line_error(*run_cli(capsys, *args)[::2], "dico")


# ---------------------------------------------------------------------------- steer and data options


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([], ["exactly one kind", "none"]),
        (["--source", "a"], ["--source and --target"]),
        (["--vector", "v", "--fine", "0,1"], ["vector and fine"]),
        (["--source-answer", "yes", "--target-answer", "no"], ["--acts"]),
        (["--fine", "0,1"], ["--concepts"]),
        (["--concepts", "c", "--fine", "0"], ["I,J"]),
        (["--vector", "v", "--impact-samples", "3"], ["--by-impact"]),
    ],
)
def test_steer_needs_exactly_one_complete_vector_kind(capsys, monkeypatch, data, tmp_path, extra, words):
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["steer", "--model", "shapes-base", "--data", data, *extra, "--out", tmp_path / "o"]
    one_line_error(*run_cli(capsys, *args)[::2], *words)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--answer-types", "colour"], ["unknown type"]),
        (["--answer-types", "yes/no"], ["meta.answer_type"]),
        (["--split", "test"], ["meta.split"]),
        (["--limit", "0"], ["no samples"]),
    ],
)
def test_data_filters_are_checked(capsys, data, tmp_path, extra, words):
    args = ["generate", "--model", "shapes-base", "--data", data, *extra, "--out", tmp_path]
    one_line_error(*run_cli(capsys, *args)[::2], *words)


def test_split_on_a_coco_file_that_is_not_karpathy(capsys, tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "a circle"}]}
    (tmp_path / "captions.json").write_text(json.dumps(doc))
    args = ["generate", "--model", "shapes-base", "--data", tmp_path / "captions.json", "--images", tmp_path]
    one_line_error(*run_cli(capsys, *args, "--split", "test", "--out", tmp_path)[::2], "Karpathy")


def test_answer_types_on_captions_and_split_on_vqa_are_refused(capsys, tmp_path):
    (tmp_path / "captions.json").write_text("{}")
    args = ["generate", "--model", "shapes-base", "--data", tmp_path / "captions.json", "--images", tmp_path]
    one_line_error(*run_cli(capsys, *args, "--answer-types", "number", "--out", tmp_path)[::2], "--answer-types")
    (tmp_path / "v2_questions.json").write_text('{"questions": []}')
    args = ["generate", "--model", "shapes-base", "--data", tmp_path / "v2_questions.json", "--images", tmp_path]
    one_line_error(*run_cli(capsys, *args, "--split", "val", "--out", tmp_path)[::2], "--split")


# ---------------------------------------------------------------------------- partial stores, store verify/repair


def test_allow_partial_is_passed_to_load_activations(capsys, monkeypatch, tmp_path):
    calls = []

    def fake(path, layer=None, **kwargs):
        calls.append(kwargs)
        raise ns.errors.StoreError("stop here", "test")

    monkeypatch.setattr(ns, "load_activations", fake)
    import inspect

    monkeypatch.setattr(
        inspect, "signature", lambda f: inspect.Signature.from_callable(lambda path, layer=None, allow_partial=False: 0)
    )
    for flag in ([], ["--allow-partial"]):
        rc, _, err = run_cli(capsys, "concepts", "--acts", tmp_path, *flag, "--out", tmp_path / "d")
        one_line_error(rc, err, "stop here")
    assert calls == [{}, {"allow_partial": True}]


def test_every_store_reading_command_has_allow_partial():
    for cmd in ("concepts", "shift", "steer"):
        res = subprocess.run([sys.executable, "-m", "nnshift", cmd, "--help"], capture_output=True, text=True, env=ENV)
        assert "--allow-partial" in res.stdout, cmd


def test_store_verify_on_a_missing_folder(capsys, tmp_path):
    one_line_error(*run_cli(capsys, "store", "verify", tmp_path / "none")[::2], "nnshift store verify", "not found")


def test_unknown_command_and_missing_arguments(capsys):
    one_line_error(*run_cli(capsys, "fly")[::2], "invalid choice")
    one_line_error(*run_cli(capsys)[::2], "required")
    one_line_error(*run_cli(capsys, "capture", "--model", "m")[::2], "nnshift capture", "required")


def test_debug_shows_the_traceback(data, tmp_path):
    args = ["capture", "--model", "shapes-base", "--data", str(data), "--layer", "x", "--out", str(tmp_path / "o")]
    with pytest.raises(cli.CliError):
        cli.main([*args, "--debug"])


def test_help_of_every_command_has_an_example():
    for name in cli.COMMANDS:
        res = subprocess.run([sys.executable, "-m", "nnshift", name, "--help"], capture_output=True, text=True, env=ENV)
        assert res.returncode == 0 and "example:" in res.stdout and f"nnshift {name}" in res.stdout, name


# ---------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_importing_exits_130_quietly(tmp_path):
    args = ["capture", "--model", "shapes-base", "--data", tmp_path / "x.jsonl", "--out", tmp_path / "o"]
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "nnshift", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: a test run started as a background job without job control inherits an ignored
        # SIGINT, which the command rightly leaves ignored (see nnshift.cli.interrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in proc.stderr:  # -X importtime reports each module as it finishes importing
        seen.append(line)
        if line.rstrip().endswith("nnshift.cli.interrupt"):
            break
    proc.send_signal(signal.SIGINT)  # the hook is in place; torch, transformers and nnsight are still to come
    _, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert not any(ln.rstrip().endswith("  torch") for ln in seen), "torch was imported before the hook"
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and INTERRUPTED in err.splitlines(), err[-2000:]


def test_ctrl_c_in_a_command_exits_130_on_its_own_line(capsys, monkeypatch):
    def interrupted(args):
        sys.stderr.write("capture:  40%|####      | 4/10")  # a progress bar without its newline
        raise KeyboardInterrupt

    monkeypatch.setitem(
        cli.COMMANDS, "demo", cli.COMMANDS["demo"].__class__(**{**cli.COMMANDS["demo"].__dict__, "run": interrupted})
    )
    rc, _, err = run_cli(capsys, "demo")
    assert rc == 130 and "Traceback" not in err
    assert INTERRUPTED in err.splitlines(), err


def test_store_verify_and_repair_call_the_library(capsys, monkeypatch, tmp_path):
    seen = []

    def verify(path):
        seen.append(("verify", path))
        return ["shard-00001: checksum mismatch"] if len(seen) == 1 else []

    def repair(path):
        seen.append(("repair", path))
        return ["dropped shard-00001 (4 samples)"]

    monkeypatch.setattr(ns.store, "verify_store", verify, raising=False)
    monkeypatch.setattr(ns.store, "repair_store", repair, raising=False)
    rc, out, _ = run_cli(capsys, "store", "verify", tmp_path)
    assert rc == 1 and "checksum mismatch" in out and "1 problem" in out
    rc, out, _ = run_cli(capsys, "store", "repair", tmp_path)
    assert rc == 0 and "dropped shard-00001" in out
    assert run_cli(capsys, "store", "verify", tmp_path)[0] == 0
    assert [s[0] for s in seen] == ["verify", "repair", "verify"] and all(s[1] == tmp_path for s in seen)


def data_args(path, images, **kw):
    base = {"data": str(path), "annotations": None, "images": str(images), "limit": None, "seed": None}
    return argparse.Namespace(**base | {"answer_types": None, "split": None} | kw)


def test_split_selects_karpathy_images(tmp_path):
    from nnshift.cli.loaders import load_data

    images = [
        {"cocoid": i, "filename": f"{i}.jpg", "filepath": "", "split": split, "sentences": [{"raw": f"cap {i}"}]}
        for i, split in enumerate(["train", "test", "train", "val"])
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    samples = load_data(data_args(tmp_path / "dataset_coco.json", tmp_path, split="train"))
    assert [s.id for s in samples] == ["coco/0", "coco/2"]
    assert len(load_data(data_args(tmp_path / "dataset_coco.json", tmp_path))) == 4
    with pytest.raises(cli.CliError, match="no such split"):
        load_data(data_args(tmp_path / "dataset_coco.json", tmp_path, split="restval"))


def test_answer_types_select_vqav2_questions(tmp_path):
    from nnshift.cli.loaders import load_data

    types = ["yes/no", "number", "other", "yes/no"]
    questions = [{"question_id": i, "image_id": 1, "question": f"q{i}"} for i in range(4)]
    anns = [
        {"question_id": i, "answer_type": t, "multiple_choice_answer": "a", "answers": [{"answer": "a"}]}
        for i, t in enumerate(types)
    ]
    (tmp_path / "v2_questions.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "v2_annotations.json").write_text(json.dumps({"annotations": anns}))
    kw = {"annotations": str(tmp_path / "v2_annotations.json")}
    samples = load_data(data_args(tmp_path / "v2_questions.json", tmp_path, answer_types=["yes/no", "number"], **kw))
    assert [s.id for s in samples] == ["vqav2/0", "vqav2/1", "vqav2/3"]
    with pytest.raises(cli.CliError, match="needs the VQAv2 annotations"):
        load_data(data_args(tmp_path / "v2_questions.json", tmp_path, answer_types=["number"]))


@pytest.mark.parametrize(
    ("file", "content"),
    [("manifest.json", "null"), ("manifest.json", "[]"), ("manifest.json", "{}"), ("activations.json", "null")],
)
def test_broken_store_or_activations_is_a_clear_error(capsys, tmp_path, file, content):
    acts = ns.Activations(torch.randn(6, 4), [f"s{i}" for i in range(6)], [""] * 6, [{}] * 6, info={"layer": 1})
    folder = tmp_path / "acts"
    acts.save(folder)
    (folder / file).write_text(content)
    one_line_error(*run_cli(capsys, "concepts", "--acts", folder, "--k", "2", "--out", tmp_path / "d")[::2], "acts")
    assert not (tmp_path / "d").exists()


def test_remote_with_a_local_model_folder_is_refused(capsys, data, tmp_path):
    args = ["capture", "--model", tmp_path, "--data", data, "--remote", "--out", tmp_path / "o"]
    one_line_error(*run_cli(capsys, *args)[::2], "--remote", "local folder")


def test_remote_is_refused_where_the_library_cannot_run_remotely(capsys, data, tmp_path):
    import inspect

    if "remote" in inspect.signature(ns.generate).parameters:
        pytest.skip("ns.generate runs remotely in this version")
    args = ["generate", "--model", "/some/local/model", "--data", data, "--remote", "--out", tmp_path]
    one_line_error(*run_cli(capsys, *args)[::2], "--remote", "generate")
