"""Write the notebooks in notebooks/ from their cell sources (nb_*.py next to this file) and execute them.

    python scripts/build_notebooks.py            # write + execute all
    python scripts/build_notebooks.py --no-run   # write only
    python scripts/build_notebooks.py --only 04  # write + execute notebook 04 only

CI runs the committed notebooks with nbmake (tests marked `notebook`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nb_concepts_shift import NB01, NB02
from nb_debias_safety import NB05
from nb_steering_remote import NB03, NB04

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks"

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_concepts.ipynb": NB01,
    "02_fine_tuning_shift.ipynb": NB02,
    "03_steering.ipynb": NB03,
    "04_remote_and_transformer_lens.ipynb": NB04,
    "05_debias_and_safety.ipynb": NB05,
}


def build(run: bool, only: list[str] | None = None) -> None:
    """Write (and execute) every notebook, or those whose name starts with one of ``only``."""
    OUT.mkdir(exist_ok=True)
    # the kernel imports this checkout's nnshift, whatever is installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    for name, cells in NOTEBOOKS.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [
            nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
            for kind, src in cells
        ]
        if run:
            t0 = time.perf_counter()
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
            print(f"{name}: executed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        nbformat.write(nb, OUT / name)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-run", action="store_true", help="write the notebooks without executing them")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. --only 04")
    args = ap.parse_args()
    build(not args.no_run, args.only)
