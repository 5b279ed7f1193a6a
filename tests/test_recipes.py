"""The paper's five recipes and the debias / refusal recipes (recipes/*.py) end to end on the shapes world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.recipes, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("recipes")
    cmd = [sys.executable, str(ROOT / "recipes" / "run_zoo.py"), "--out", str(out), "--n-train", "120"]
    subprocess.run([*cmd, "--n-eval", "120"], check=True, cwd=ROOT, capture_output=True)
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}


def test_every_recipe_wrote_its_results(results: dict[str, dict]) -> None:
    assert sorted(results) == sorted(
        [
            "shift_analysis",
            "coarse_yesno_number",
            "target_yes_no",
            "fine_by_impact",
            "caption_style",
            "debias",
            "refusal",
        ]
    )


def test_shift_analysis_recovers_the_fine_tuned_concepts(results: dict[str, dict]) -> None:
    s = results["shift_analysis"]["summary"]
    assert s["recovery_shifted"] > s["recovery_original"] + 0.1
    assert sum(s["dynamics"].values()) >= results["shift_analysis"]["k"]
    assert {"recovery.png", "dynamics.png", "similarity.png"} <= set(results["shift_analysis"]["figures"])


def test_coarse_steering_turns_yes_no_into_numbers_and_spares_other(results: dict[str, dict]) -> None:
    r = results["coarse_yesno_number"]
    before, after = r["target_type_share_on_source_questions"]
    assert after >= before + 0.5
    assert abs(r["untouched_accuracy"]["other"]["delta"]) <= 0.05


def test_target_answer_turns_yes_into_no(results: dict[str, dict]) -> None:
    r = results["target_yes_no"]
    assert r["turned_share"] >= 0.3
    assert all(abs(v["delta"]) <= 0.05 for v in r["untouched_accuracy"].values())


def test_fine_grained_best_pair_changes_answers(results: dict[str, dict]) -> None:
    r = results["fine_by_impact"]
    assert r["candidates"] == r["k"] * (r["k"] - 1)
    assert r["changed_by_best"] > 0
    assert r["top"][0]["score"] >= r["top"][-1]["score"]


def test_caption_style_names_more_colours(results: dict[str, dict]) -> None:
    before, after = results["caption_style"]["style_rate"]
    assert after >= before + 0.3
    assert len(results["caption_style"]["cider_d"]) == 2


def test_docs_table_matches_the_committed_results() -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "run_zoo.py"), "--out", str(ROOT / "benchmarks/results/recipes")]
    done = subprocess.run([*cmd, "--table-only", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = (ROOT / "docs" / "debias-and-safety.md").read_text()
    assert "| finetune+target_answer |" in doc and "alpha 2.0, gated |" in doc  # the generated tables are there


def test_debias_finds_the_red_concepts_and_steering_removes_the_bias(results: dict[str, dict]) -> None:
    r = results["debias"]
    carriers = [c for c in r["concepts"] if c["carries_bias"]]
    assert carriers and all(c["words_shifted"][0] == "red" for c in carriers)
    assert all("red" not in c["true_colors"] for c in carriers)  # the red circles' concept does not carry it
    m = r["measured"]
    assert m["base"]["bias_rate"] <= 0.05 and m["finetune"]["bias_rate"] >= 0.9
    after = m["finetune+target_answer"]
    assert after["bias_rate"] <= 0.1 and after["circle_color_accuracy"] >= 0.8
    assert after["other_accuracy"] >= m["finetune"]["other_accuracy"] - 0.05
    ablated = m["finetune+project_out_target_answer"]  # op="project_out", alpha 1
    assert ablated["bias_rate"] <= 0.1 and ablated["circle_color_accuracy"] >= 0.8
    gated = m["finetune+gated_conceptwise_reversed_shift"]  # concept gates, decided in the trace
    assert gated["bias_rate"] <= 0.1 and gated["circle_color_accuracy"] >= 0.8
    assert gated["other_accuracy"] >= m["finetune+conceptwise_reversed_shift"]["other_accuracy"]


def test_refusal_is_enforced_with_the_gate_and_removed_from_the_fine_tune(results: dict[str, dict]) -> None:
    m = results["refusal"]["measured"]
    assert m["base"]["refusal_rate"] == 0.0 and m["finetune"]["refusal_rate"] >= 0.9
    gated = m["base + refusal vector, alpha 2.0, gated"]
    assert gated["refusal_rate"] >= 0.8 and gated["false_refusal_rate"] <= 0.2
    assert m["base + refusal vector, alpha 2.0"]["false_refusal_rate"] >= gated["false_refusal_rate"]
    assert m["finetune - refusal vector, alpha 1.5"]["refusal_rate"] <= 0.3
    assert results["refusal"]["gate"]["recall"] >= 0.8
    assert m["finetune, refusal projected out"]["refusal_rate"] <= 0.3  # op="project_out", alpha 1
