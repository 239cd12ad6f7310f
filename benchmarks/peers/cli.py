"""The command line: ``python -m benchmarks.peers MODEL_DIR [--peers ...]`` prints one JSON
result per peer; ``--child`` is the other half of ``run_peer(isolated=True)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .child import answer_request
from .common import PRECISIONS
from .registry import PEERS
from .run import run_peer


def _child() -> int:
    """``run_peer(isolated=True)``'s other half: request JSON on stdin, result on stdout."""
    request = json.loads(sys.stdin.read())
    answer_request(run_peer(**request, isolated=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child()
    package_doc = sys.modules[__package__].__doc__ or ""
    # prog: run as a package, argv[0] is .../peers/__main__.py, which says nothing.
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=package_doc.split("\n")[0]
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--peers", default=",".join(PEERS), help="comma list (default: all)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--prompt", default="def main(args):\n    return")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=None, help="conversion cache")
    args = p.parse_args(argv)
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(str(args.model_dir / "tokenizer.json")).encode(args.prompt).ids
    for peer in [s.strip() for s in args.peers.split(",") if s.strip()]:
        r = run_peer(
            peer,
            args.model_dir,
            prompt,
            args.new_tokens,
            args.threads,
            args.precision,
            args.repeats,
            args.work_dir,
        )
        print(json.dumps(asdict(r)), flush=True)
    return 0
