"""Running one peer in a fresh Python process (``python -m benchmarks.peers --child``).

Runtimes sharing a process slow each other down (OpenMP and ONNX Runtime pools keep
spin-waiting after their work), and a native crash in a peer would kill the benchmark;
in a child process the first cannot happen and the second becomes a result.
The request goes to the child's stdin as JSON; the result comes back on one stdout line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from ..page_cache import evict
from .common import PeerResult

RESULT_MARK = "EDGEZOO-PEER-RESULT "
CHILD_TIMEOUT_S = 3 * 3600  # a large int4 genai build is the slowest step we have seen


def run_in_child(
    peer: str,
    model_dir: Path,
    prompt_ids: list[int],
    new_tokens: int,
    threads: int,
    precision: str,
    repeats: int,
    work_dir: Path | None,
) -> PeerResult:
    request = {
        "peer": peer,
        "model_dir": str(Path(model_dir).resolve()),
        "prompt_ids": [int(i) for i in prompt_ids],
        "new_tokens": new_tokens,
        "threads": threads,
        "precision": precision,
        "repeats": repeats,
        "work_dir": None if work_dir is None else str(Path(work_dir).resolve()),
    }
    repo = str(Path(__file__).resolve().parents[2])  # this checkout's benchmarks and zoo
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",  # every peer reads the local dir; nothing may be downloaded
        "TRANSFORMERS_OFFLINE": "1",
    }
    # The child maps cold files: peak RSS then does not depend on what was written last.
    evict(Path(model_dir), None if work_dir is None else Path(work_dir))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.peers", "--child"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return PeerResult(peer, precision, False, f"timed out after {CHILD_TIMEOUT_S} s", threads)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return PeerResult(**json.loads(line[len(RESULT_MARK) :]))
    how = f"exit code {proc.returncode}"
    if proc.returncode < 0:
        how = f"signal {signal.Signals(-proc.returncode).name}"
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    note = f"peer process died ({how}): {tail[-1] if tail else 'no output'}"[:300]
    return PeerResult(peer, precision, False, note, threads)


def answer_request(result: PeerResult) -> None:
    """The child's last word: ``result`` on its own marked stdout line."""
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()
