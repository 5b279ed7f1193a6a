"""Ctrl-C in the `nnshift` command: exit 130 with one line on stderr, never a traceback, imports included.

`nnshift/__init__.py` imports this module first: when the process is the `nnshift` command (the console script
or ``python -m nnshift``), SIGINT exits at once while the heavy imports (torch, transformers, nnsight) run;
`main` then hands Ctrl-C back to Python as `KeyboardInterrupt` so that open files are closed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

__all__ = ["INTERRUPTED", "is_cli_process", "quiet_while_importing", "restore", "report_interrupt"]

INTERRUPTED = "nnshift: interrupted; run the same command again to resume"


def is_cli_process() -> bool:
    """True when this interpreter runs the `nnshift` command (console script or ``python -m nnshift``)."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if argv0 in ("nnshift", "nnshift.exe", "nnshift-script.py"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and orig[i + 1 : i + 2] == ["nnshift"] for i, a in enumerate(orig)) or "-mnnshift" in orig


def _close_progress_bars() -> bool:
    """Close the open tqdm bars (their line is cleared); True if one was open."""
    tqdm_module = sys.modules.get("tqdm")
    bars = list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", []) or [])
    for bar in bars:
        with contextlib.suppress(Exception):  # a bar that cannot close must not hide the message
            bar.close()
    return bool(bars)


def report_interrupt() -> None:
    """Print the interrupt message on a line of its own (after clearing any progress bar)."""
    _close_progress_bars()
    sys.stderr.write(f"\n{INTERRUPTED}\n")  # a line of its own, even after a half-written progress line
    sys.stderr.flush()


def _exit_now(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler used while importing: print and leave with status 130."""
    sys.stderr.write(f"\n{INTERRUPTED}\n")
    sys.stderr.flush()
    os._exit(130)


def quiet_while_importing() -> None:
    """In the `nnshift` process, make Ctrl-C exit 130 quietly until `restore` is called."""
    if not is_cli_process() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return  # not the command, or Ctrl-C is ignored on purpose (e.g. a background job)
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _exit_now)


def restore() -> None:
    """Give Ctrl-C back to Python (KeyboardInterrupt) if `quiet_while_importing` took it."""
    with contextlib.suppress(ValueError):  # not the main thread
        if signal.getsignal(signal.SIGINT) is _exit_now:
            signal.signal(signal.SIGINT, signal.default_int_handler)


quiet_while_importing()  # nnshift/__init__.py imports this module before torch, transformers and nnsight
