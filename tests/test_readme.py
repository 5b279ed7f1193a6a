"""The README's code block is examples/quickstart.py, it runs, and its steering visibly steers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import readme_output  # noqa: E402


def _steered(lines: str) -> list[tuple[str, str, str]]:
    return re.findall(r"^'(.+)': '(.*)' -> '(.*)'$", lines, flags=re.M)


def test_readme_code_block_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert f"```python\n{example}```" in readme


@pytest.mark.slow
def test_quickstart_runs_and_steers_as_the_readme_says() -> None:
    out = readme_output.run_example()
    steered = _steered(out)
    assert len(steered) == 4
    assert sum(before != after for _, before, after in steered) >= 3
    assert steered == _steered(readme_output.readme_block((ROOT / "README.md").read_text()))
    own = out.strip().splitlines()[-1]  # the patch inside your own generation steers too
    assert own == steered[0][2]
