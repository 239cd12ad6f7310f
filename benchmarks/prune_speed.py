"""Decode speed of structurally pruned models against their unpruned source, per size.

Pruning's speed-up depends on the architecture, not on training, so this uses random-init
presets (quality after the recovery fine-tune is measured on trained models by
``benchmarks/quantize_sizes.py``). For each size: the preset, the same model with 25 % of
the attention (whole KV groups, the smallest step GQA allows) and 30 % of the MLP channels
removed, both exported to the fp32 GroupQueryAttention graph; batch-1 per-token latency is
timed in a fresh process per measurement, alternating pruned / unpruned over several
rounds (this machine's timing drifts), and the ratio of medians is reported.

    python -m benchmarks.prune_speed --sizes mini,small,medium
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from edgezoo import atomic
from edgezoo.zoo.data import cache_root

RESULTS = Path(__file__).parent / "results"


def child(model_dir: str, threads: int, new_tokens: int) -> None:
    """Print one JSON line: this process's median ms/token for ``model_dir``'s GQA graph."""
    import numpy as np

    from edgezoo.runtime.api import load_variant
    from edgezoo.runtime.timing import time_decode

    lm = load_variant(model_dir, "gqa", backend="ort-cpu", threads=threads)
    rng = np.random.default_rng(0)
    prompt = [1, *rng.integers(4, lm.tokenizer.get_vocab_size(), 31).tolist()]
    steps, _, _ = time_decode(lm, [prompt], new_tokens, repeats=3)
    print(json.dumps({"ms_per_token": statistics.median(steps) * 1000}))


def timed(model_dir: Path, threads: int, new_tokens: int) -> float:
    cmd = [sys.executable, "-m", "benchmarks.prune_speed", "--child", str(model_dir)]
    cmd += ["--threads", str(threads), "--new-tokens", str(new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"timing {model_dir} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["ms_per_token"]


def prepare(size: str, work: Path, heads: float, mlp: float) -> tuple[Path, Path, dict]:
    """(unpruned dir, pruned dir, prune report) with fresh GQA exports of both."""
    import torch

    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.quantize.prune import prune_dir
    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.tokenizer import save_tokenizer

    src, pruned = work / f"{size}", work / f"{size}-pruned"
    if not (src / "onnx" / "model.gqa.onnx").is_file():
        shutil.rmtree(src, ignore_errors=True)
        torch.manual_seed(0)
        cfg = make_config("lm", size)
        save_model_dir(build_model(cfg).eval(), src)
        from benchmarks.bench import _tokenizer_text
        from edgezoo.zoo.tokenizer import train_tokenizer

        tok = train_tokenizer(_tokenizer_text(), cfg.vocab_size, max_chars=2_000_000)
        save_tokenizer(tok, src, cfg.max_position_embeddings)
        to_onnx(src, greedy_steps=8, optimize=False)
    report = prune_dir(src, pruned, heads=heads, mlp=mlp, force=True)
    to_onnx(pruned, greedy_steps=8, optimize=False)
    return src, pruned, report.to_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="mini,small,medium")
    p.add_argument("--heads", type=float, default=0.25)
    p.add_argument("--mlp", type=float, default=0.30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--work", default=str(cache_root() / "prune_speed"))
    p.add_argument("--out", default=str(RESULTS / "prune_speed"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.threads, args.new_tokens)
    rows = []
    for size in args.sizes.split(","):
        src, pruned, report = prepare(size, Path(args.work), args.heads, args.mlp)
        times: dict[str, list[float]] = {"unpruned": [], "pruned": []}
        for _ in range(args.rounds):
            for name, path in (("unpruned", src), ("pruned", pruned)):
                times[name].append(timed(path, args.threads, args.new_tokens))
        before, after = (statistics.median(times[k]) for k in ("unpruned", "pruned"))
        rows.append(
            {
                "size": size,
                "params_before": report["params_before"],
                "params_after": report["params_after"],
                "notes": report.get("notes", []),
                "ms_per_token": times,
                "unpruned_ms": before,
                "pruned_ms": after,
                "speedup": before / after,
            }
        )
        print(rows[-1], flush=True)
    result = {
        "heads": args.heads,
        "mlp": args.mlp,
        "threads": args.threads,
        "rounds": args.rounds,
        "weights": "random-init (speed only)",
        "rows": rows,
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    lines = [
        f"Structured pruning, {args.heads:.0%} of attention (whole KV groups) + {args.mlp:.0%} of MLP "
        f"channels: fp32 GQA graph, batch 1, {args.threads} threads, medians of {args.rounds} "
        "alternating runs, each in a fresh process.",
        "",
        "| size | params | pruned params | ms/token | pruned ms/token | speed-up | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params_before'] / 1e6:.1f}M | {r['params_after'] / 1e6:.1f}M | "
            f"{r['unpruned_ms']:.2f} | {r['pruned_ms']:.2f} | {r['speedup']:.2f}× | {'; '.join(r['notes'])} |"
        )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
