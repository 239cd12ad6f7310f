"""``run_peer``: check a request, run it (in a fresh process by default) and turn every
failure into a ``PeerResult`` with a note, so one broken peer never stops a benchmark.
"""

from __future__ import annotations

from pathlib import Path

from .cache import work_folder
from .child import run_in_child
from .common import PRECISIONS, PeerResult, PeerUnavailable, context_length, one_line
from .measure import measure
from .registry import LOADERS, PEERS


def run_peer(
    peer: str,
    model_dir: Path,
    prompt_ids: list[int],
    new_tokens: int,
    threads: int,
    precision: str = "fp32",
    repeats: int = 3,
    work_dir: Path | None = None,
    *,
    isolated: bool = True,
) -> PeerResult:
    """Greedy-decode ``new_tokens`` after ``prompt_ids`` with ``peer``; never raises.

    One untimed warm-up run, then ``repeats`` timed runs: TTFT is their median, the decode
    percentiles pool every step of every run. Conversions are cached in ``work_dir``
    (a temporary folder, deleted afterwards, when it is None).

    ``isolated`` (the default) runs the peer in a fresh Python process. Runtimes in one
    process slow each other down: OpenMP and ONNX Runtime pools keep spin-waiting after
    their work, and on 2 cores that took a later peer from 0.035 to 0.28 ms/token. A
    native crash in a peer then also becomes a result instead of killing the benchmark.
    """
    result = PeerResult(peer=peer, precision=precision, available=False, note="", threads=threads)
    try:
        check_request(peer, precision, prompt_ids, new_tokens, threads)
        if isolated:
            return run_in_child(
                peer, model_dir, prompt_ids, new_tokens, threads, precision, repeats, work_dir
            )
        _run_here(result, Path(model_dir), prompt_ids, new_tokens, repeats, work_dir)
    except PeerUnavailable as e:
        result.note = str(e)
    except Exception as e:  # a peer's failure is a result, not a crash of the benchmark
        result.note = one_line(e)
        result.load_s = None
    return result


def check_request(
    peer: str, precision: str, prompt_ids: list[int], new_tokens: int, threads: int
) -> None:
    if peer not in PEERS:
        raise PeerUnavailable(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    if precision not in PRECISIONS and not (peer == "edgezoo" and precision == "int8-dynamic"):
        raise PeerUnavailable(f"unknown precision {precision!r}; use fp32, int8 or int4")
    if not prompt_ids:
        raise PeerUnavailable("empty prompt: give at least one token id")
    if new_tokens < 1 or threads < 1:
        raise PeerUnavailable("new_tokens and threads must both be at least 1")


def process_peak_rss_mb() -> float | None:
    """This process's resident-memory high-water mark (Linux VmHWM): in a fresh child
    process, the peer's whole footprint — interpreter, runtime, weights, caches."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _run_here(
    result: PeerResult,
    model_dir: Path,
    prompt_ids: list[int],
    new_tokens: int,
    repeats: int,
    work_dir: Path | None,
) -> None:
    """Load and time the peer in this process, filling ``result`` in (raises on failure)."""
    prompt_ids = [int(i) for i in prompt_ids]
    limit = context_length(model_dir)
    capped = max(0, min(new_tokens, limit - len(prompt_ids)))
    if capped < 1:
        raise PeerUnavailable(f"prompt of {len(prompt_ids)} tokens fills the context {limit}")
    with work_folder(work_dir) as work:
        loaded = LOADERS[result.peer](model_dir, result.precision, result.threads, Path(work))
        result.load_s = loaded.load_s
        notes = [loaded.note]
        if capped < new_tokens:
            notes.append(f"new_tokens capped to {capped} by the context length {limit}")
        tokens, ttft_ms, p50, p95, mean, consistent = measure(
            loaded.decode, prompt_ids, capped, max(1, repeats)
        )
        if len(tokens) < capped:
            notes.append(f"stopped early after {len(tokens)} of {capped} tokens")
        if not consistent:
            notes.append("tokens differed between repeats (non-deterministic)")
    result.available = True
    result.peak_rss_mb = process_peak_rss_mb()
    result.note = "; ".join(notes)
    result.tokens = tokens
    result.ttft_ms, result.decode_ms_per_token_p50, result.decode_ms_per_token_p95 = (
        ttft_ms,
        p50,
        p95,
    )
    result.decode_ms_per_token_mean = mean
