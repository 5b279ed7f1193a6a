"""Run examples/quickstart.py (the README's code block) and write what it prints into README.md.

python scripts/readme_output.py           # rewrite the block between the quickstart-output markers
python scripts/readme_output.py --print   # only print
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quickstart-output:begin -->", "<!-- quickstart-output:end -->"


def run_example() -> str:
    """The example's standard output (progress bars and warnings go to stderr)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"examples/quickstart.py failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def readme_block(readme: str) -> str:
    """The text between the markers, without the code fence."""
    inner = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    return inner.removeprefix("```text").removesuffix("```").strip()


def main() -> None:
    """Run the example; print its output or write it into README.md."""
    out = run_example()
    if "--print" in sys.argv:
        print(out)
        return
    path = ROOT / "README.md"
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n```text\n" + out + "\n```\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
