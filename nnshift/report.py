"""A self-contained HTML report of a run: sections of tables and PNG figures, plus results.json."""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnshift.artifacts import atomic_write_bytes
from nnshift.errors import ArtifactError

__all__ = ["Report", "SELECTIVE_POINTS", "Section", "max_untouched_move", "read_results", "untouched_finding"]

#: a steering is called selective only when no untouched answer type's accuracy moves by more than this (points)
SELECTIVE_POINTS = 2.0

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.8em;margin-bottom:.2em}h2{border-bottom:2px solid #e5e5ea;padding-bottom:.2em;margin-top:2em}
.lead{color:#555}table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
td,th{border:1px solid #d2d2d7;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f5f5f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}figure img{max-width:100%;
border:1px solid #e5e5ea}figcaption{color:#555;font-size:.9em}.finding{background:#f0f7ff;border-left:4px solid
#0a84ff;padding:.5em .8em;margin:.6em 0}.timing td{font-size:.85em}nav a{margin-right:1em}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return '<td class="num">–</td>'
        return f'<td class="num">{v:.3g}</td>' if abs(v) < 1e4 else f'<td class="num">{v:.0f}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    if isinstance(v, (list, tuple)):
        return f"<td>{html.escape(', '.join(str(x) for x in v))}</td>"
    return f"<td>{html.escape(str(v))}</td>"


def max_untouched_move(untouched: Mapping[str, Mapping[str, float]]) -> float:
    """The largest ``|delta|`` of accuracy over the untouched answer types, in points (NaN when none was measured)."""
    deltas = [abs(100.0 * float(d["delta"])) for d in untouched.values() if not math.isnan(float(d["delta"]))]
    return max(deltas) if deltas else float("nan")


def untouched_finding(untouched: Mapping[str, Mapping[str, float]], tolerance: float = SELECTIVE_POINTS) -> str:
    """What a steering did to the answer types it was not aimed at, computed from its own accuracies.

    ``untouched`` maps an answer type to ``{"before", "after", "delta"}`` accuracies in [0, 1] (as in
    `nnshift.evaluate.VQAComparison.untouched_accuracy`). "selective" is said only when every ``|delta|`` is at most
    ``tolerance`` points; otherwise the measured losses are stated.
    """
    deltas = {t: 100.0 * float(d["delta"]) for t, d in untouched.items() if not math.isnan(float(d["delta"]))}
    if not deltas:
        return "no untouched answer type was evaluated, so selectivity is not measured"
    moved = ", ".join(f"{t} {v:+.1f}" for t, v in deltas.items())
    worst = max(abs(v) for v in deltas.values())
    if worst == 0.0:
        return f"selective: accuracy on the untouched answer types did not move ({moved})"
    if worst <= tolerance:
        return f"selective: accuracy on the untouched answer types moved by at most {worst:.1f} points ({moved})"
    losses = [f"{-v:.1f} points on {t!r}" for t, v in deltas.items() if v < -tolerance]
    cost = f"it costs {', '.join(losses)}" if losses else f"accuracy moved by up to {worst:.1f} points"
    return f"not selective (more than {tolerance:g} points): {cost} ({moved})"


@dataclass
class Section:
    """One report section: a title, short findings, tables (list of row dicts) and figures (PNG file names)."""

    title: str
    text: str = ""
    findings: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """HTML id of the section."""
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def to_html(self) -> str:
        """The section as HTML."""
        out = [f'<section id="{self.anchor}"><h2>{html.escape(self.title)}</h2>']
        if self.text:
            out.append(f"<p>{html.escape(self.text)}</p>")
        out += [f'<div class="finding">{html.escape(f)}</div>' for f in self.findings]
        for caption, rows in self.tables:
            if not rows:
                continue
            cols = list(rows[0])
            out.append(f"<table><caption>{html.escape(caption)}</caption><tr>")
            out += [f"<th>{html.escape(str(c))}</th>" for c in cols]
            out.append("</tr>")
            for r in rows:
                out.append("<tr>" + "".join(_cell(r.get(c, "")) for c in cols) + "</tr>")
            out.append("</table>")
        for caption, file in self.figures:
            out.append(
                f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        out.append("</section>")
        return "\n".join(out)


class Report:
    """Collects sections, figures and numbers; `write` produces ``index.html``, PNGs and ``results.json``."""

    def __init__(self, title: str, out: str | Path, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    def section(self, title: str, text: str = "") -> Section:
        """Add and return a new section."""
        s = Section(title, text)
        self.sections.append(s)
        return s

    def figure(self, section: Section, fig: Any, name: str, caption: str) -> str:
        """Save a matplotlib figure as ``name.png`` next to the report and add it to `section`."""
        import matplotlib.pyplot as plt

        file = f"{name}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(self.out / file, buf.getvalue())
        section.figures.append((caption, file))
        return file

    def write(self) -> Path:
        """Write ``index.html`` and ``results.json``; returns the HTML path."""
        nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        timing_rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td class='num'>{v:.1f} s</td></tr>" for k, v in self.timings.items()
        )
        total = sum(self.timings.values())
        body = "\n".join(s.to_html() for s in self.sections)
        doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>
<h1>{html.escape(self.title)}</h1><p class="lead">{html.escape(self.subtitle)}</p><nav>{nav}</nav>
{body}
<script>
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-figures-loaded", ok);
  document.body.setAttribute("data-figures-total", imgs.length);
}});
</script>
<section id="timings"><h2>Run time per stage</h2><table class="timing">{timing_rows}
<tr><th>total</th><th class='num'>{total:.1f} s</th></tr></table></section>
</body></html>"""
        atomic_write_bytes(self.out / "index.html", doc.encode())
        results = {**self.results, "timings_s": self.timings}
        atomic_write_bytes(self.out / "results.json", json.dumps(results, indent=2, default=_json_default).encode())
        return self.out / "index.html"


def read_results(path: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a run (``path`` is the file or its folder), checked to be a JSON object."""
    file = Path(path)
    file = file / "results.json" if file.is_dir() else file
    hint = "re-run the command that wrote it (nnshift demo, nnshift report or a recipe)"
    try:
        doc = json.loads(file.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no run results: {str(file)!r} is missing", "pass a folder written by a run") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{str(file)!r} is not valid JSON: {exc}", hint) from exc
    if not isinstance(doc, dict):
        raise ArtifactError(f"{str(file)!r} holds a JSON {type(doc).__name__}, not an object", hint)
    timings = doc.get("timings_s", {})
    if not isinstance(timings, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in timings.values()
    ):
        raise ArtifactError(f"{str(file)!r}: 'timings_s' is not an object of seconds", hint)
    return doc


def _json_default(o: Any) -> Any:
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
