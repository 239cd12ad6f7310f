"""Check free memory before work that needs a known multiple of the weights.

Exporting or quantizing a model that does not fit should stop before it starts, with the
number it needs, instead of being killed by the kernel halfway (or swapping for an hour).
"""

from __future__ import annotations

from pathlib import Path

from edgezoo.errors import ResourceError

GB = 1e9


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where that is not known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def ensure_available(need: int, what: str, available: int | None = None) -> None:
    """Raise ``ResourceError`` when less than ``need`` bytes of memory are free."""
    available = available_bytes() if available is None else available
    if available is not None and available < need:
        raise ResourceError(
            f"{what} needs about {need / GB:.1f} GB of free memory and {available / GB:.1f} GB "
            "is available: close other programs or run it on a machine with more memory."
        )


def release_freed() -> None:
    """Hand memory that Python and torch freed back to the OS (glibc keeps it otherwise).

    After a large model is dropped its pages stay in malloc's free lists and count against
    the process; the next stage (an ONNX Runtime session of the same size) would then
    stack on top of them."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
