"""What every peer module shares: the result record, the "cannot run here" exception, the
loader's return type and small helpers (versions, optional imports, threads, warnings).

Kept apart from the loaders so that a peer module imports only this and ``cache``, never
another peer or the runner.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")


@dataclass
class PeerResult:
    peer: str  # "pytorch-eager", "optimum-ort", "ort-genai", "ctranslate2", "llama-cpp"
    precision: str  # "fp32" | "int8" | "int4"
    available: bool
    note: str  # why skipped / what exactly was run (versions, settings)
    threads: int
    load_s: float | None = None
    ttft_ms: float | None = None  # prefill of the prompt + first token
    decode_ms_per_token_p50: float | None = None
    decode_ms_per_token_p95: float | None = None
    decode_ms_per_token_mean: float | None = None
    tokens: list[int] = field(default_factory=list)  # generated ids (greedy)
    peak_rss_mb: float | None = None  # the peer's process high-water mark (VmHWM), if isolated


class PeerUnavailable(Exception):
    """A peer cannot run this request here; the message is the note."""


# One timed decode: (generated ids, seconds to first token, seconds of each later step).
Decode = Callable[[list[int], int], tuple[list[int], float, list[float]]]


@dataclass
class Loaded:
    """A peer ready to decode: its decode function, load seconds and what exactly it runs."""

    decode: Decode
    load_s: float
    note: str


# A peer's loader: (model_dir, precision, threads, work folder) -> Loaded.
Loader = Callable[[Path, str, int, Path], Loaded]


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def context_length(model_dir: Path) -> int:
    path = model_dir / "config.json"
    if not path.is_file():
        raise PeerUnavailable(f"{model_dir} is not a model dir: config.json is missing")
    cfg = json.loads(path.read_text())
    return int(cfg.get("max_position_embeddings") or 1 << 30)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def require(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"not installed: pip install {dist}")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters and converters warn a lot about tracing; none of it changes the numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
