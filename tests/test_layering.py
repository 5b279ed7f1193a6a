"""The layers of docs/architecture.md, checked against the imports of every module of nnshift/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnshift"


def _layers() -> dict[str, int]:
    """Module name -> layer, read from the table under "## Layers" in docs/architecture.md."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for row in re.findall(r"^\|\s*(\d+)\s*\|(.+)\|\s*$", section, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", row[1]):
            layers["nnshift" if name == "nnshift" else f"nnshift.{name}"] = int(row[0])
    assert layers, "docs/architecture.md has no '## Layers' table"
    return layers


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest listed prefix of ``module``."""
    if module == "nnshift":
        return layers.get("nnshift")
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # the root package's layer is not a default for its modules
        name = ".".join(parts[:n])
        if name in layers:
            return layers[name]
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported nnshift module) for every import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "nnshift"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "nnshift":
                continue
            if node.module == "nnshift":  # `from nnshift import zoo` imports the submodule
                out += [(node.lineno, f"nnshift.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def test_every_module_has_a_layer() -> None:
    layers = _layers()
    missing = [_module_name(p) for p in sorted(PACKAGE.rglob("*.py")) if _layer_of(_module_name(p), layers) is None]
    assert not missing, f"add these modules to the Layers table of docs/architecture.md: {missing}"


def test_modules_import_only_their_layer_or_lower() -> None:
    layers = _layers()
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        mine = _layer_of(me, layers)
        for line, target in _imports(path):
            theirs = _layer_of(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({me}, layer {mine}) imports {target} (layer {theirs})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)
