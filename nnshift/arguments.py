"""Small argument checks shared by the public functions: each raises `nnshift.errors.ArgumentError` with a hint."""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, overload

from nnshift.errors import ArgumentError

__all__ = [
    "as_list",
    "check_flag",
    "check_int",
    "check_mapping",
    "check_number",
    "check_path",
    "check_str",
    "check_strings",
    "renamed_keywords",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@overload
def check_int(value: Any, name: str, minimum: int | None = None, *, optional: Literal[False] = False) -> int: ...
@overload
def check_int(value: Any, name: str, minimum: int | None = None, *, optional: bool) -> int | None: ...
def check_int(value: Any, name: str, minimum: int | None = None, *, optional: bool = False) -> int | None:
    """``value`` as an int (no bool, float or str), at least ``minimum``; None allowed when ``optional``."""
    if value is None and optional:
        return None
    low = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ArgumentError(f"{name} must be an integer{low}, got {value!r}", f"pass {name}= an int{low}")
    return value


def check_number(value: Any, name: str) -> float:
    """``value`` as a finite float (an int or float; no bool, str or tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}", f"pass e.g. {name}=1.0")
    return float(value)


def check_flag(value: Any, name: str) -> bool:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, got {value!r}", f"pass {name}=True or {name}=False")
    return value


def check_str(value: Any, name: str, *, optional: bool = False) -> str | None:
    """``value`` is a str (None allowed when ``optional``)."""
    if (value is None and optional) or isinstance(value, str):
        return value
    raise ArgumentError(f"{name} must be a string, got {value!r}", f"pass {name}='...'")


def as_list(value: Any) -> list[Any] | None:
    """The items of an iterable that is not a str, bytes or mapping (None if it is not one, or fails to iterate)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    try:
        return list(value)
    except (TypeError, ValueError):  # e.g. a 0-d tensor
        return None


def check_strings(value: Any, name: str, *, optional: bool = False) -> list[str]:
    """A str or an iterable of str, as a list (None: empty list when ``optional``)."""
    if value is None and optional:
        return []
    if isinstance(value, str):
        return [value]
    items = as_list(value)
    if items is None or not all(isinstance(x, str) for x in items):
        raise ArgumentError(f"{name} must be a string or a list of strings, got {value!r}", f"pass {name}='yes'")
    return items


def check_mapping(value: Any, name: str) -> Mapping[str, str] | None:
    """None, or a mapping from str to str (e.g. answer -> answer type)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ArgumentError(f"{name} must be a dict of strings, got {value!r}", f"pass e.g. {name}={{'two': 'number'}}")
    return value


@overload
def check_path(value: Any, name: str, *, optional: Literal[False] = False) -> Path: ...
@overload
def check_path(value: Any, name: str, *, optional: bool) -> Path | None: ...
def check_path(value: Any, name: str, *, optional: bool = False) -> Path | None:
    """A non-empty str or `pathlib.Path`, as a Path (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, Path) or (isinstance(value, str) and value):
        return Path(value)
    raise ArgumentError(f"{name} must be a path (str or pathlib.Path), got {value!r}", f"pass {name}='file.jsonl'")


def check_samples(samples: Any, what: str, *, unique: bool = False) -> list[Any]:
    """A non-empty list of `nnshift.Sample` (any iterable but a str); with ``unique``, no id twice."""
    from collections import Counter

    from nnshift.data import Sample
    from nnshift.errors import EmptyInputError

    items = None if isinstance(samples, Sample) else as_list(samples)
    if items is None or not all(isinstance(s, Sample) for s in items):
        raise ArgumentError(f"{what} needs a list of ns.Sample, got {samples!r:.60}", "wrap inputs in ns.Sample(...)")
    if not items:
        raise EmptyInputError(f"{what} got no samples", "pass at least one Sample")
    dup = sorted(i for i, n in Counter(s.id for s in items).items() if n > 1) if unique else []
    if dup:
        raise ArgumentError(
            f"{len(dup)} sample id(s) appear more than once: {dup[:5]}", "give every sample a unique id"
        )
    return items


def renamed_keywords(**renames: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator: each old keyword (``old="new"``) still works, with a `DeprecationWarning` naming the new one.

    Positional calls are unchanged; the old and the new keyword (or the old keyword and the argument given by
    position) together raise `nnshift.errors.ArgumentError`.
    """

    def wrap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        order = list(inspect.signature(fn).parameters)
        where = getattr(fn, "__qualname__", "the function")

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> _R:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs or (new in order and order.index(new) < len(args)):
                    raise ArgumentError(
                        f"{where}() got both {new}= and its former name {old}=",
                        f"pass only {new}= ({old}= is its deprecated name)",
                    )
                warnings.warn(f"{where}({old}=...) is now {where}({new}=...)", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap
