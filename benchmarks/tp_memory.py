"""Memory per rank and step time, tensor parallel 1 vs 2 (gloo, CPU): ``python -m
benchmarks.tp_memory``.

Each configuration runs the zoo's own pieces (``build_model``, ``Dist.wrap`` with
``--tp``, ``make_optimizer``, ``Dist.clip_grad_norm``) for a few AdamW steps on random
tokens, in fresh processes (under torchrun for TP 2). Per rank it records the bytes of the
training state that rank holds (its local shards of weights, gradients and Adam moments,
read from the tensors themselves), its peak RSS, and the median step time.

On this 2-core machine both TP ranks share the cores and talk through gloo over loopback,
so the step time says how the cores get used, not what TP gains or costs on GPUs; the
memory per rank is what TP is for (a model whose blocks do not fit one device).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"
SIZES = ("nano", "micro", "mini")


def _local_bytes(t) -> int:
    """Bytes this rank stores for ``t`` (a DTensor's local shard, or the tensor itself)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _state_bytes(model, optimizer) -> dict[str, int]:
    """Weights, gradients and optimizer state held by this rank (tied weights once)."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(_local_bytes(p) for p in params)
    grads = sum(_local_bytes(p.grad) for p in params if p.grad is not None)
    optim = sum(
        _local_bytes(v)
        for state in optimizer.state.values()
        for v in state.values()
        if hasattr(v, "numel") and v.dim() > 0
    )
    return {"weights": weights, "grads": grads, "optimizer": optim}


def worker(size: str, tp: int, steps: int, batch: int, context: int, out: Path) -> None:
    """One rank: train ``steps`` steps of ``size`` at ``tp`` and write its measurements."""
    import torch
    import torch.nn.functional as F

    from edgezoo.zoo import distributed
    from edgezoo.zoo.modeldir import build_model
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.train import make_optimizer
    from edgezoo.zoo.train_config import TrainConfig

    dist = distributed.setup("cpu", tp=tp)
    cfg = make_config("lm", size)
    torch.manual_seed(0)
    model = build_model(cfg)
    train_model = dist.wrap(model)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps):
        x = torch.randint(0, cfg.vocab_size, (batch, context + 1), generator=gen)
        t0 = time.perf_counter()
        logits, _ = train_model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        dist.clip_grad_norm(model, 1.0)
        optimizer.step()
        state = _state_bytes(model, optimizer)  # before zero_grad frees the gradients
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    record = {
        "rank": dist.rank,
        **state,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": statistics.median(times[1:]),
    }
    atomic.write_json(out / f"rank{dist.rank}.json", record)
    dist.teardown()


def measure(size: str, tp: int, steps: int, batch: int, context: int) -> dict:
    """Run one configuration in fresh processes; rank 0's numbers (ranks are symmetric)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [size, str(tp), str(steps), str(batch), str(context), tmp]
        script = ["-m", "benchmarks.tp_memory", "--worker", *args]
        if tp == 1:
            cmd = [sys.executable, *script]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += [f"--nproc_per_node={tp}", *script]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // tp))}
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=900)
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    state = ranks[0]["weights"] + ranks[0]["grads"] + ranks[0]["optimizer"]
    return {"size": size, "tp": tp, **ranks[0], "state_bytes": state, "ranks": len(ranks)}


def computed(size: str, tp: int = 2) -> dict:
    """fp32 AdamW training state per rank at ``tp``, by arithmetic on the preset's shapes
    (16 bytes per parameter: weight, gradient, two moments): for sizes too big to run here."""
    import torch

    from edgezoo.zoo.modeldir import build_model
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.tensor_parallel import tp_plan

    with torch.device("meta"):
        model = build_model(make_config("lm", size))
    suffixes = tuple(f"{name}.weight" for name in tp_plan())
    params = dict(model.named_parameters())  # tied weights appear once
    split = sum(p.numel() for n, p in params.items() if n.endswith(suffixes))
    whole = sum(p.numel() for p in params.values())
    return {
        "size": size,
        "params": whole,
        "split_fraction": split / whole,
        "state_tp1_bytes": 16 * whole,
        f"state_tp{tp}_bytes": 16 * (whole - split + split // tp),
    }


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def computed_table(rows: list[dict]) -> str:
    lines = [
        "| size | params | share split by TP | state / rank TP 1 | state / rank TP 2 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['split_fraction']:.0%} | "
            f"{_mb(r['state_tp1_bytes'])} | {_mb(r['state_tp2_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    lines = [
        "| size | TP | training state / rank | weights / rank | peak RSS / rank | step (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['tp']} | {r['state_bytes'] / 1e6:.1f} MB | "
            f"{r['weights'] / 1e6:.1f} MB | {r['peak_rss'] / 1e6:.0f} MB | {r['step_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "tp"))
    args = p.parse_args()
    if args.worker:
        size, tp, steps, batch, context, out = args.worker
        worker(size, int(tp), int(steps), int(batch), int(context), Path(out))
        return
    load_before = os.getloadavg()[0]
    rows = [
        measure(size, tp, args.steps, args.batch, args.context)
        for size in args.sizes.split(",")
        for tp in (1, 2)
    ]
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    note = (
        f"batch {args.batch} × context {args.context}, fp32, AdamW, {args.steps} steps "
        f"(median step time after the first); {os.cpu_count()} CPU cores shared with other "
        f"jobs ({load}: step times are noisy), gloo. Training "
        "state = this rank's weights + gradients + Adam moments, read from its tensors; "
        "embeddings, norms and the tied LM head stay replicated, so TP 2 halves only the "
        "decoder blocks. Both TP ranks share the same cores, so step times show how the "
        "cores get used, not how TP scales: TP 1 is one process with 2 intra-op threads, "
        "TP 2 two single-threaded processes that also pay 4 all-reduces per block "
        "(2 forward, 2 backward) over loopback. On GPUs TP's cost is those all-reduces and "
        "its gain the memory per rank; NCCL was not run."
    )
    from edgezoo.zoo.presets import LM_PRESETS

    sizes = [computed(size) for size in LM_PRESETS]
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), {"rows": rows, "note": note, "computed": sizes})
    md = (
        f"Measured:\n\n{table(rows)}\n{note}\n\nComputed for every preset (fp32 weights, "
        "gradients and AdamW moments, 16 bytes per parameter; activations not included):\n\n"
        f"{computed_table(sizes)}"
    )
    atomic.write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
