"""Start every fresh-process memory measurement from cold files.

A model file written moments before (an export, a quantization, a peer's conversion) sits
in the page cache in large folios; when a runtime maps it, each page fault maps a whole
folio into the process, and its resident memory counts up to ~25 MB more for the same
work than for a file read back from disk (measured: `small` int8, 152 vs 128 MB peak).
Dropping the files' cached pages before each measurement makes peak RSS depend on the
runtime, not on what the benchmark happened to write last.
"""

from __future__ import annotations

import os
from pathlib import Path


def evict(*folders: Path | None) -> int:
    """Drop the page-cache pages of every file under ``folders`` (written-back first);
    returns how many files were evicted. Best effort: a file that cannot be opened, or a
    platform without ``posix_fadvise``, is left as it is."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    evicted = 0
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for path in Path(folder).rglob("*"):
            if not path.is_file():
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)  # dirty pages are not dropped: write them back first
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                evicted += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return evicted
