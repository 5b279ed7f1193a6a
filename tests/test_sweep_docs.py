"""The steering-sweep docs are what scripts/sweep_tables.py generates from the committed benchmark JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import sweep_tables  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "steering_sweep"


@pytest.mark.parametrize("rel", sorted(sweep_tables.BLOCKS))
def test_doc_block_is_generated_from_the_json(rel: str) -> None:
    text = (ROOT / rel).read_text()
    begin, end = sweep_tables.BLOCKS[rel]
    assert text.count(begin) == 1 and text.count(end) == 1
    inside = text.split(begin, 1)[1].split(end, 1)[0]
    assert inside == "\n" + sweep_tables.blocks()[rel] + "\n", f"run python scripts/sweep_tables.py ({rel})"


def test_sweep_section_sits_before_the_shapes_results() -> None:
    text = (ROOT / "docs" / "steering.md").read_text()
    assert text.index("## Sweeps and calibration") < text.index("## Results on the shapes world")
    assert "## Steering sweeps" in (ROOT / "docs" / "benchmarks.md").read_text()


def test_figures_are_the_benchmark_figures() -> None:
    for src, dst in sweep_tables.FIGURES.items():
        a, b = (RESULTS / src).read_bytes(), (ROOT / "docs" / "img" / dst).read_bytes()
        assert a == b and len(a) > 10_000
        assert (
            f"img/{dst}" in (ROOT / "docs" / "steering.md").read_text() + (ROOT / "docs" / "benchmarks.md").read_text()
        )


@pytest.mark.parametrize("name", sweep_tables.TARGETS)
def test_each_target_json_is_complete_and_consistent(name: str) -> None:
    doc = json.loads((RESULTS / f"{name}.json").read_text())
    meta = doc["meta"]
    assert meta["command"].startswith("python benchmarks/steering_sweep.py")
    assert meta["date"] and meta["machine"]["cpu_count"] and meta["versions"]["torch"]
    assert len(doc["alphas"]) == 5 and len(doc["layers"]) == 2
    kinds = [r["kind"] for r in doc["sweep"]["rows"]]
    assert kinds.count("steer") == 10 and kinds.count("unsteered") == 1 and "prompt" in kinds
    assert ("model" in kinds) == (name == "caption_style")  # the fine-tune baseline
    # the calibrated point follows calibrate's rule on the validation rows (recomputed here)
    cal = doc["calibration"]
    rows = cal["validation_rows"]
    ok = [r for r in rows if r["max_drop"] <= cal["max_untouched_drop"] + 1e-12]
    assert cal["met"] == bool(ok)
    if ok:
        best = max(r["target_rate"] for r in ok)
        chosen = [r for r in ok if r["target_rate"] == best]
        assert cal["alpha"] == min(r["alpha"] for r in chosen)
    assert cal["validation_chosen"]["alpha"] == cal["alpha"] == cal["held_out_chosen"]["alpha"]
    assert cal["validation_n"] + cal["held_out_n"] == doc["n_samples"]
    fresh = doc.get("fresh")
    assert (fresh is not None) == (name in ("yesno_to_number", "yes_to_no"))
    if fresh:
        un, st = fresh["unsteered"], fresh["steered"]
        assert math.isclose(fresh["turned"], st["target_rate"] - un["target_rate"])
        for t, v in fresh["untouched_change"].items():
            assert math.isclose(v, st["untouched_accuracy"][t] - un["untouched_accuracy"][t])
        assert fresh["within_2_points"] == all(abs(v) <= 0.02 + 1e-12 for v in fresh["untouched_change"].values())


def test_cost_json_records_the_ratio() -> None:
    c = json.loads((RESULTS / "cost.json").read_text())
    for secs, ratio in (("seconds", "ratio_to_steer"), ("cpu_seconds", "cpu_ratio_to_steer")):
        one = c[secs]["steer (one alpha)"]
        for k, v in c[secs].items():
            assert math.isclose(c[ratio][k], v / one, rel_tol=0.005, abs_tol=0.011)  # seconds are rounded
    assert c["n_questions"] == 400 and c["grid_points"] == 11 and c["meta"]["machine"]["torch_threads"] == 1


def test_spearman_against_hand_values() -> None:
    assert sweep_tables.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sweep_tables.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1,2,3,4) vs (1,2,4,3): 1 - 6 * 2 / (4 * 15) = 0.8
    assert sweep_tables.spearman([0.1, 0.5, 0.7, 0.9], [1, 2, 9, 5]) == pytest.approx(0.8)
    # a tie takes the average rank
    assert sweep_tables.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
