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
