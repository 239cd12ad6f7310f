"""One line per long stage, so logs of unattended runs say what ran and for how long.

Stages without a step count (training a tokenizer, tokenizing a corpus, exporting,
quantizing, evaluating) run inside ``stage("name")``. When stderr is not a terminal (CI, a
job scheduler, ``2> log``) it prints a plain start line and an end line with the time
taken, nothing that rewrites itself; on a terminal it shows a rich spinner while the stage
runs (when rich is installed) and the same end line. Torch-free and dependency-free, so
the runtime and quantize stages can use it. ``EDGEZOO_PROGRESS=0`` silences it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

PREFIX = "edgezoo"


def enabled() -> bool:
    return os.environ.get("EDGEZOO_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _spinner(name: str, stream: TextIO) -> contextlib.AbstractContextManager:
    """rich's live status on a terminal; a no-op context when rich is missing."""
    try:
        from rich.console import Console
    except ImportError:
        return contextlib.nullcontext()
    return Console(file=stream).status(f"{name} …")


@contextlib.contextmanager
def stage(name: str, stream: TextIO | None = None) -> Iterator[None]:
    """Report the start and end (with seconds taken, or the failure) of one stage."""
    stream = stream or sys.stderr
    if not enabled():
        yield
        return
    tty = _is_tty(stream)
    if not tty:
        print(f"{PREFIX}: {name} …", file=stream, flush=True)
    t0 = time.perf_counter()
    try:
        with _spinner(name, stream) if tty else contextlib.nullcontext():
            yield
    except BaseException as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        print(f"{PREFIX}: {name} {what} after {_seconds(t0)}", file=stream, flush=True)
        raise
    print(f"{PREFIX}: {name} done in {_seconds(t0)}", file=stream, flush=True)


def _seconds(t0: float) -> str:
    s = time.perf_counter() - t0
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"
