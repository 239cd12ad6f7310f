"""Where conversions live: the work folder, and one cached folder per peer and precision that
is rebuilt only when the source model dir (or the peer's version or settings) changes.

Conversions take minutes to hours; the stamp written beside each keeps repeated benchmark
runs from redoing them, and the atomic swap keeps an interrupted build from being reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgezoo import atomic

STAMP_FILE = "edgezoo-source.json"  # in each cached conversion: what it was built from


@contextlib.contextmanager
def work_folder(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="edgezoo-peers-") as tmp:
        yield Path(tmp)


def source_stamp(model_dir: Path, **extra: str) -> dict:
    """What a cached conversion was built from: config/tokenizer hashes, weight files' stat."""
    stamp: dict = {"model_dir": str(model_dir.resolve()), **extra}
    for name in ("config.json", "tokenizer.json"):
        p = model_dir / name
        if p.is_file():
            stamp[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(model_dir.glob("*.safetensors")):
        st = p.stat()
        stamp[p.name] = [st.st_size, st.st_mtime_ns]
    return stamp


def cached(target: Path, stamp: dict, build: Callable[[Path], None]) -> tuple[Path, float | None]:
    """``target`` built by ``build(tmp)`` unless a build from the same source is there.

    Returns the folder and the build seconds (None when the cache was used). The build
    goes to a temporary folder swapped in whole, so an interrupted build leaves no cache.
    """
    stamp_path = target / STAMP_FILE
    if stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return target, None
        except json.JSONDecodeError:
            pass
    t0 = time.perf_counter()
    with atomic.atomic_dir(target) as tmp:
        build(tmp)
        atomic.write_json(tmp / STAMP_FILE, stamp)
    return target, time.perf_counter() - t0


def built(seconds: float | None) -> str:
    return "cached conversion" if seconds is None else f"converted in {seconds:.1f} s"
