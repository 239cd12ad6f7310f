"""Training throughput, model-FLOPs utilisation and peak memory of the LM presets on this CPU.

Random-init models on random token batches, so no data set or tokenizer is needed and the
numbers measure the training step alone: forward, cross-entropy, backward, gradient clip and
the trainer's own AdamW (``zoo.train.make_optimizer``). Small sizes get tokens/s and MFU
against a measured fp32 matmul peak; large sizes get step time and peak RSS, each in a fresh
subprocess so every peak is that size's own and not the high-water mark of an earlier one.

    python -m benchmarks.train_throughput                 # full run -> benchmarks/results/
    python -m benchmarks.train_throughput --sizes nano --big "" --steps 2 --out /tmp/tt.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgezoo import atomic
from edgezoo.errors import ConfigError
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.modeldir import build_model
from edgezoo.zoo.presets import count_params, make_config, preset_names
from edgezoo.zoo.train import make_optimizer
from edgezoo.zoo.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BYTES_PER_PARAM = 16  # fp32 weights + grads + AdamW m and v
FLOPS_NOTE = (
    "flops/token = 6*N + 12*L*d*T (PaLM appendix B); N = non-embedding params + lm_head "
    "(the head is a matmul even when tied to the embedding), T = context; mfu_6n omits the "
    "attention term"
)


def parse_sizes(text: str) -> list[str]:
    """Comma list of LM presets; an empty string means none (so `--big ""` skips a phase)."""
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in preset_names("lm")]
    if unknown:
        raise ConfigError(f"unknown LM size(s) {unknown}; valid: {', '.join(preset_names('lm'))}")
    return sizes


def flop_params(cfg: LlamaConfig) -> int:
    """N for 6N: every weight a token is multiplied by, i.e. all but the embedding lookup."""
    embed = cfg.vocab_size * cfg.hidden_size
    return count_params(cfg) if cfg.tie_word_embeddings else count_params(cfg) - embed


def flops_per_token(cfg: LlamaConfig, context: int) -> tuple[int, int]:
    """(6N, attention term 12*L*d*T): training FLOPs per token, forward + backward."""
    return 6 * flop_params(cfg), 12 * cfg.num_hidden_layers * cfg.hidden_size * context


def time_training(cfg: LlamaConfig, batch: int, context: int, steps: int) -> list[float]:
    """Seconds per optimizer step, as zoo.train does one on CPU (minus data and LR schedule)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    tokens = torch.randint(0, cfg.vocab_size, (batch, context + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), TrainConfig().grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    del model, optimizer
    gc.collect()
    return times


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 torch.mm FLOP/s here: the ceiling MFU is measured against (not a spec sheet)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: first call pays for thread start-up and allocation
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def spread(times: list[float]) -> dict[str, float]:
    """Median and extremes: few samples on a shared CPU, so min/max hide nothing."""
    # inclusive: with few samples the default method extrapolates beyond min/max
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else None
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "p10": deciles[0] if deciles else times[0],
        "p90": deciles[-1] if deciles else times[0],
    }


def meminfo_bytes(key: str) -> int:
    """A /proc/meminfo field in bytes; MemAvailable (not MemFree) is what a new process can get."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def machine() -> dict:
    """Everything a reader needs to compare these numbers with another machine's."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags = next(
        (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []
    )
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {
        "cpu": model,
        "isa": [
            f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags
        ],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "ram_gb": round(meminfo_bytes("MemTotal") / 1e9, 1),
        "ram_available_gb": round(meminfo_bytes("MemAvailable") / 1e9, 1),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def measure_small(size: str, args: argparse.Namespace) -> dict:
    """Tokens/s of one size, in this process (small models leave little behind)."""
    cfg = make_config("lm", size)
    times = time_training(cfg, args.batch, args.context, args.warmup + args.steps)[args.warmup :]
    step = spread(times)
    tokens = args.batch * args.context
    dense, attn = flops_per_token(cfg, args.context)
    tok_s = tokens / step["median"]
    return {
        "size": size,
        "params": count_params(cfg),
        "flop_params": flop_params(cfg),
        "step_s": step,
        "step_s_all": times,
        "tokens_per_s": {"median": tok_s, "min": tokens / step["max"], "max": tokens / step["min"]},
        "flops_per_token": dense + attn,
        "flops_per_token_6n": dense,
    }


def add_mfu(row: dict, peak: float) -> dict:
    """Model FLOPs achieved (at the median step) over the measured matmul peak."""
    tok_s = row["tokens_per_s"]["median"]
    return row | {
        "mfu": tok_s * row["flops_per_token"] / peak,
        "mfu_6n": tok_s * row["flops_per_token_6n"] / peak,
    }


def measure_big(size: str, args: argparse.Namespace) -> dict:
    """One size in a fresh interpreter, so its ru_maxrss is its own peak; skipped if it can't fit."""
    cfg = make_config("lm", size)
    need, avail = count_params(cfg) * BYTES_PER_PARAM, meminfo_bytes("MemAvailable")
    row = {"size": size, "params": count_params(cfg), "estimated_need_gb": need / 1e9}
    if need > 0.8 * avail:
        return row | {
            "skipped": f"needs ~{need / 1e9:.1f} GB > 80% of {avail / 1e9:.1f} GB available"
        }
    flags = f"--child {size} --big-batch {args.big_batch} --big-context {args.big_context} "
    flags += f"--big-steps {args.big_steps} --threads {torch.get_num_threads()}"
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", *flags.split()]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr; killed for memory?)"]
        return row | {"error": f"exit {proc.returncode}: {tail[0]}", "stderr": proc.stderr[-2000:]}
    return row | json.loads(proc.stdout.strip().splitlines()[-1])


def child(size: str, args: argparse.Namespace) -> None:
    """Subprocess body: time the steps, then print one JSON line with the peak RSS."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    cfg = make_config("lm", size)
    times = time_training(cfg, args.big_batch, args.big_context, args.big_steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steady = statistics.median(times[1:]) if len(times) > 1 else None
    out = {
        "first_step_s": times[0],
        "steady_step_s": steady,
        "step_s_all": times,
        "peak_rss_gb": peak / 1e9,
        "rss_after_imports_gb": rss_before / 1e9,
    }
    print(json.dumps(out))


def to_markdown(res: dict) -> str:
    """The same numbers as the JSON, as tables a README or PR can paste."""
    m, s = res["machine"], res["settings"]
    lines = [
        "# Training throughput (random-init LM presets, fp32, CPU)",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, {m['ram_gb']} GB RAM, "
        f"torch {m['torch']}, {m['date']}. Matmul peak {res['matmul_peak_gflops']:.1f} GFLOP/s "
        f"(best fp32 {s['matmul_n']}² torch.mm).",
        "",
    ]
    if res["throughput"]:
        lines += [
            f"Batch {s['batch']} × context {s['context']}, {s['warmup']} warm-up + {s['steps']} "
            f"timed steps (forward + CE + backward + clip + AdamW). {res['flops_note']}.",
            "",
            "| size | params | N (6N) | step ms median (min–max) | tokens/s median (min–max) | MFU | MFU 6N |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for r in res["throughput"]:
        st, tk = r["step_s"], r["tokens_per_s"]
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['flop_params'] / 1e6:.1f}M "
            f"| {st['median'] * 1e3:.0f} ({st['min'] * 1e3:.0f}–{st['max'] * 1e3:.0f}) "
            f"| {tk['median']:.0f} ({tk['min']:.0f}–{tk['max']:.0f}) "
            f"| {r['mfu']:.1%} | {r['mfu_6n']:.1%} |"
        )
    if res["big"]:
        lines += [
            *([""] if res["throughput"] else []),
            f"Large presets: batch {s['big_batch']} × context {s['big_context']}, "
            f"{s['big_steps']} step(s) per fresh subprocess; the first step includes AdamW "
            "state allocation. Peak RSS includes Python + torch.",
            "",
            "| size | params | est. need (16 B/param) | first step s | steady step s | peak RSS | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in res["big"]:
            first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else "—"
            steady = f"{r['steady_step_s']:.1f}" if r.get("steady_step_s") else "—"
            rss = f"{r['peak_rss_gb']:.1f} GB" if "peak_rss_gb" in r else "—"
            note = r.get("skipped") or r.get("error", "").split("\n")[0]
            lines.append(
                f"| {r['size']} | {r['params'] / 1e6:.0f}M | {r['estimated_need_gb']:.1f} GB "
                f"| {first} | {steady} | {rss} | {note} |"
            )
    return "\n".join(lines) + "\n"


def positive(text: str) -> int:
    """argparse type: a step count or shape of 0 would only fail later, inside torch."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput",
        description=__doc__.split("\n\n")[0] + " Writes JSON and a markdown table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", default="nano,micro,mini,small", help="presets for tokens/s + MFU")
    p.add_argument(
        "--big", default="base,large,xl", help='presets for step time + peak RSS ("" = none)'
    )
    p.add_argument(
        "--batch", type=positive, default=8, help="sequences per step (throughput phase)"
    )
    p.add_argument(
        "--context", type=positive, default=256, help="tokens per sequence (throughput phase)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (>= 0)")
    p.add_argument(
        "--steps", type=positive, default=10, help="timed steps per size (throughput phase)"
    )
    p.add_argument("--big-batch", type=positive, default=1, help="sequences per large-size step")
    p.add_argument("--big-context", type=positive, default=128, help="tokens per sequence there")
    p.add_argument(
        "--big-steps", type=positive, default=2, help="steps per large size; step 1 is cold"
    )
    p.add_argument(
        "--matmul-n", type=positive, default=2048, help="square fp32 matmul size for the peak"
    )
    p.add_argument(
        "--threads", type=positive, default=torch.get_num_threads(), help="torch threads"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/train_throughput.json",
        help="JSON path; the markdown table goes beside it as .md",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one large size, in a subprocess
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    try:
        args.sizes, args.big = parse_sizes(args.sizes), parse_sizes(args.big)
    except ConfigError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    """Small sizes in-process between two peak measurements, then each large size apart."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)
    sizes, big = args.sizes, args.big
    info = machine()
    peaks = [matmul_peak_flops(args.matmul_n)]
    rows = []
    for size in sizes:
        rows.append(measure_small(size, args))
        print(f"{size}: {rows[-1]['tokens_per_s']['median']:.0f} tokens/s", file=sys.stderr)
    # a second peak after the runs: on a shared CPU either one alone may be a low reading
    peaks.append(matmul_peak_flops(args.matmul_n))
    peak = max(peaks)
    rows = [add_mfu(r, peak) for r in rows]
    mfus = ", ".join(f"{r['size']} {r['mfu']:.1%}" for r in rows)
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; MFU {mfus}", file=sys.stderr)
    big_rows = []
    for size in big:
        print(f"{size}: fresh subprocess ...", file=sys.stderr)
        big_rows.append(measure_big(size, args))
        r = big_rows[-1]
        status = r.get("skipped") or r.get("error") or f"peak RSS {r['peak_rss_gb']:.1f} GB"
        print(f"{size}: {status}, steps {r.get('step_s_all')}", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
    settings |= {
        "sizes": sizes,
        "big": big,
        "dtype": "float32",
        "device": "cpu",
        "optimizer": "zoo.train.make_optimizer(TrainConfig())",
    }
    result = {
        "machine": info,
        "settings": settings,
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_gflops_before_after": [p / 1e9 for p in peaks],
        "flops_note": FLOPS_NOTE,
        "throughput": rows,
        "big": big_rows,
    }
    atomic.write_json(args.out, result)
    atomic.write_text(args.out.with_suffix(".md"), to_markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
