"""``training.jsonl`` — one JSON line per logged step — and the progress bar: how a run
reports itself, apart from the loop."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from edgezoo import atomic

LOG_FILE = "training.jsonl"


def progress_bar(enabled: bool, start: int, total: int):
    """A tqdm bar over steps, starting at ``start`` on resume (None when switched off)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=None
    )


def write_record(f, record: dict[str, Any]) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines after the checkpoint so the log reads as one run.

    A run killed mid-write leaves a torn last line (no newline, not JSON): it is dropped
    with a warning and the file rewritten whole, so new lines start on a line of their own.
    """
    if not path.is_file():
        return
    kept, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            torn += 1
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    if torn:
        warnings.warn(
            f"{path}: dropped {torn} unreadable line(s) (a run killed mid-write); "
            "the log continues from the checkpoint",
            stacklevel=2,
        )
    atomic.write_text(path, "".join(line + "\n" for line in kept))
