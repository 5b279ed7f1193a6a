import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nnshift.report import Report


def test_report_writes_html_figures_and_results(tmp_path):
    r = Report("nnshift demo", tmp_path / "rep", subtitle="shapes world")
    s = r.section("Concepts", "what the concepts are")
    s.findings.append("colours separate")
    s.tables.append(("purity", [{"concept": 0, "purity": 0.95, "words": ["red", "circle"]}]))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    r.figure(s, fig, "concepts", "a figure")
    r.results["purity"] = [0.95]
    r.timings["capture"] = 1.25
    path = r.write()
    page = path.read_text()
    assert 'id="concepts"' in page and "concepts.png" in page and "colours separate" in page and "red, circle" in page
    assert (tmp_path / "rep" / "concepts.png").stat().st_size > 1000
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert res["purity"] == [0.95] and res["timings_s"]["capture"] == 1.25


def test_untouched_finding_says_selective_only_within_two_points():
    import pytest

    from nnshift.report import SELECTIVE_POINTS, max_untouched_move, untouched_finding

    assert SELECTIVE_POINTS == 2.0
    ok = {"other": {"before": 0.993, "after": 0.985, "delta": 0.985 - 0.993}, "number": {"delta": 0.0}}
    text = untouched_finding(ok)
    assert text.startswith("selective") and "0.8 points" in text and "other -0.8" in text
    # the demo report's case: "other" loses 9.6 points -> not selective, and the cost is stated
    bad = {"other": {"delta": -0.096}, "number": {"delta": 0.004}}
    text = untouched_finding(bad)
    assert text.startswith("not selective") and "9.6 points on 'other'" in text and "selective:" not in text
    up = untouched_finding({"other": {"delta": 0.05}})
    assert up.startswith("not selective") and "5.0 points" in up
    assert "not measured" in untouched_finding({})
    assert untouched_finding({"other": {"delta": 0.0}}) == (
        "selective: accuracy on the untouched answer types did not move (other +0.0)"
    )
    assert max_untouched_move(bad) == pytest.approx(9.6)


def test_run_report_files_are_atomic_and_read_back_checked(tmp_path):
    """Figures, index.html and results.json: umask mode, no temporary file left; results read back checked."""
    import os
    import stat

    import pytest

    from nnshift.errors import ArtifactError
    from nnshift.report import read_results

    old = os.umask(0o022)
    try:
        rep = Report("t", tmp_path / "r")
        fig, _ = plt.subplots()
        rep.figure(rep.section("s"), fig, "f", "a figure")
        rep.results["x"] = [1, 2]
        rep.timings["stage"] = 0.5
        rep.write()
    finally:
        os.umask(old)
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert files == ["f.png", "index.html", "results.json"]  # no temporary file left
    assert {stat.S_IMODE((tmp_path / "r" / f).stat().st_mode) for f in files} == {0o644}
    assert (tmp_path / "r" / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert read_results(tmp_path / "r") == {"x": [1, 2], "timings_s": {"stage": 0.5}}
    for content, words in [
        ("[1, 2]", "list"),
        ("null", "NoneType"),
        ("{oops", "not valid JSON"),
        ('{"timings_s": [1]}', "timings_s"),
        ('{"timings_s": {"a": "1"}}', "timings_s"),
    ]:
        (tmp_path / "r" / "results.json").write_text(content)
        with pytest.raises(ArtifactError, match=words) as err:
            read_results(tmp_path / "r" / "results.json")
        assert err.value.hint
    with pytest.raises(ArtifactError, match="missing"):
        read_results(tmp_path / "nowhere")
