"""One writer per model dir: export and quantize take ``onnx/.lock`` before they write.

Both read the manifest, build graphs in ``onnx/`` and write the manifest back; two at once
on one dir would each write a manifest missing the other's variants (or drop a variant the
other is quantizing). The lock is ``flock`` on ``<model_dir>/onnx/.lock``: the kernel
releases it when its holder exits, even killed, so a crash never leaves the dir locked;
the holder removes the file as it lets go, so a finished run leaves nothing behind.
A second command waits for the first (saying so), as ``apt`` or ``pip`` do, instead of
failing. Re-entrant within one thread (``import_hf`` calls ``to_onnx``); where ``fcntl``
does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LOCK_FILE = ".lock"
_held = threading.local()  # resolved lock path -> depth, per thread

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def model_dir_lock(model_dir: str | Path, what: str) -> Iterator[None]:
    """Hold the model dir's lock for the block; wait (with a message) while another holds it."""
    path = Path(model_dir) / "onnx" / LOCK_FILE
    depth = _depths()
    key = path.resolve()
    if depth.get(key):  # this thread holds it already: an outer export or quantize
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    fd = _acquire(path, what, model_dir)
    if fd is None:
        yield
        return
    import fcntl

    depth[key] = 1
    try:
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        depth.pop(key, None)
        path.unlink(missing_ok=True)  # while still held: a waiter then sees a new file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(path: Path, what: str, model_dir: str | Path) -> int | None:
    """The open lock file, locked by us; retried when the file we locked was removed by
    the previous holder (it unlinks on release, so no lock file outlives its holder)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    said = False
    while True:
        fd = _open(path)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                print(
                    f"edgezoo: {what}: waiting for {holder or 'another process'} to finish "
                    f"with {model_dir} (one export/quantize per model dir at a time) ...",
                    file=sys.stderr,
                    flush=True,
                )
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had removed: try the current one


def _depths() -> dict[Path, int]:
    if not hasattr(_held, "depth"):
        _held.depth = {}
    return _held.depth


def _open(path: Path) -> int | None:
    """The lock file, open; None where no lock can be taken: a model dir that does not
    exist or that nobody can write (the work itself then says what is wrong)."""
    if not path.parent.parent.is_dir():
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None


def locks_model_dir(what: str) -> Callable[[F], F]:
    """Decorate a function whose first argument is a model dir to run under its lock."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(model_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
            with model_dir_lock(model_dir, what):
                return fn(model_dir, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
