"""The error contract: every error class is documented, every raise site says what to do next."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nnshift.errors as errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnshift"


def _error_names() -> set[str]:
    return {name for name in errors.__all__ if isinstance(getattr(errors, name), type)}


def test_every_error_class_is_documented() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    documented = set(re.findall(r"`(\w+Error)`", doc))
    missing = sorted(_error_names() - documented)
    assert not missing, f"docs/errors.md does not list {missing}"


def test_every_error_class_is_exported_and_subclasses_nnshift_error() -> None:
    for name in _error_names():
        assert issubclass(getattr(errors, name), errors.NnshiftError), name
    defined = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.NnshiftError)}
    assert defined <= set(errors.__all__), sorted(defined - set(errors.__all__))


def _hint_of(call: ast.Call) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == "hint":
            return kw.value
    return call.args[1] if len(call.args) >= 2 else None


def _raise_sites_without_hint() -> list[str]:
    names = _error_names()
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in names:
                continue
            hint = _hint_of(node.exc)
            empty = hint is None or (isinstance(hint, ast.Constant) and not str(hint.value or "").strip())
            if empty:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return bad


def test_every_raise_site_passes_a_hint() -> None:
    bad = _raise_sites_without_hint()
    assert not bad, "raise sites without a hint:\n" + "\n".join(bad)
