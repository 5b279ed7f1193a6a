"""docs/zoo.md's seed-robustness table is what benchmarks/zoo_seeds.py writes from the committed seed results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "zoo_seeds"


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("zoo_seeds", ROOT / "benchmarks" / "zoo_seeds.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_doc_table_matches_the_committed_seed_results() -> None:
    docs = sorted((json.loads(p.read_text()) for p in RESULTS.glob("seed*.json")), key=lambda d: d["seed"])
    if not docs:
        pytest.skip("no seed results committed")
    mod = _module()
    text = (ROOT / "docs" / "zoo.md").read_text()
    table = text.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0].strip()
    assert table == mod.table(mod.summary(docs)) + "\n\n" + mod.verdicts(docs)
    assert [d["seed"] for d in docs] == mod.summary(docs)["seeds"]


def test_summary_mean_and_spread_are_computed_from_the_values() -> None:
    mod = _module()
    docs = [
        {"seed": s, "quality": {"vqa_yes/no": v}, "shift": {}, "steering": {}}
        for s, v in ((0, 0.9), (1, 0.8), (2, 1.0))
    ]
    rows = mod.ROWS
    try:
        mod.ROWS = [("VQA accuracy, yes/no", ("quality", "vqa_yes/no"), "{:.2f}")]
        s = mod.summary(docs)
    finally:
        mod.ROWS = rows
    f = s["findings"]["VQA accuracy, yes/no"]
    assert f["values"] == [0.9, 0.8, 1.0]
    assert f["mean"] == pytest.approx(0.9) and f["spread"] == pytest.approx(0.2)
