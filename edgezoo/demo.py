"""``edgezoo demo``: the main job end to end on the built-in corpus, with progress.

1. train a small Llama-style LM on the Python standard library (the built-in corpus);
2. export it to validated ONNX (portable graph + GroupQueryAttention graph);
3. quantize it to int8 and int4, each measured on held-out text and gated against fp32;
4. generate a sample through the runtime (ONNX Runtime, no PyTorch), streaming;
5. benchmark every variant against PyTorch eager on the same weights and print the table.

A second run reuses what the first one finished (training resumes from its checkpoint).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    size: str = "nano"
    steps: int = 600
    batch_size: int = 16
    context: int = 256
    prompt: str = "def read_config(path):\n"
    threads: int = 2


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    console = console or Console()
    out = Path(cfg.out)
    report: dict = {"out": str(out)}
    t0 = time.perf_counter()
    report["train"] = _train(cfg, out, console)
    report["export"] = _export(out, console)
    report["quantize"] = _quantize(out, console)
    report["sample"] = _generate(cfg, out, console)
    report["bench"] = _bench(cfg, out, console)
    report["elapsed_s"] = time.perf_counter() - t0
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    console.rule(
        f"done in {report['elapsed_s'] / 60:.1f} min — model dir {out}, report {out / 'demo.json'}"
    )
    return report


def _train(cfg: DemoConfig, out: Path, console: Console) -> dict:
    from edgezoo.zoo import corpus
    from edgezoo.zoo.checkpoint import list_checkpoints
    from edgezoo.zoo.data import token_cache
    from edgezoo.zoo.metrics import unigram_loss
    from edgezoo.zoo.tokenizer import load_tokenizer
    from edgezoo.zoo.train import TrainConfig, train

    console.rule(
        f"[bold]1/5 train[/] lm-{cfg.size} on {corpus.LM_CORPUS} ({len(corpus.stdlib_files())} stdlib files)"
    )
    train_cfg = TrainConfig(
        family="lm",
        size=cfg.size,
        out=str(out),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        context=cfg.context,
        eval_every=max(1, cfg.steps // 3),
        checkpoint_every=max(1, cfg.steps // 3),
        log_every=25,
        resume=bool(list_checkpoints(out)),
    )
    result = train(train_cfg)
    tok = load_tokenizer(out)
    splits = token_cache(corpus.LM_CORPUS, tok, train_cfg.val_frac)
    baseline = unigram_loss(splits.train, splits.val, tok.get_vocab_size())
    console.print(
        f"validation loss {result.metrics['val_loss']:.3f} (perplexity {result.metrics['val_ppl']:.1f}) vs "
        f"unigram baseline {baseline:.3f} (perplexity {2.718281828**baseline:.0f})"
    )
    return {
        "steps": result.steps,
        "val_loss": result.metrics["val_loss"],
        "val_ppl": result.metrics["val_ppl"],
        "unigram_val_loss": baseline,
        "train_tokens_per_s": result.tokens_per_s,
    }


def _export(out: Path, console: Console) -> dict:
    from edgezoo.export.onnx_export import to_onnx

    console.rule("[bold]2/5 export[/] to ONNX, validated against PyTorch")
    result = to_onnx(out)
    for name, v in result.variants.items():
        console.print(
            f"{name:>5}: {v['graph']:<14} max |Δ logits| {v['max_abs_diff']:.1e}, "
            f"{v['greedy_steps']}/{v['greedy_steps']} greedy tokens equal, {v['bytes'] / 1e6:.1f} MB"
        )
    return {
        n: {"max_abs_diff": v["max_abs_diff"], "bytes": v["bytes"]}
        for n, v in result.variants.items()
    }


def _quantize(out: Path, console: Console) -> dict:
    from edgezoo.quantize.pipeline import quantize_model
    from edgezoo.quantize.report import variants_table

    console.rule("[bold]3/5 quantize[/] int8 and int4, measured on held-out stdlib text")
    quantize_model(out, "int8")
    variants = quantize_model(out, "int4")
    console.print(variants_table(variants), markup=False, highlight=False)
    return {
        n: {
            k: v.get(k)
            for k in ("precision", "graph", "bytes", "quality", "latency", "recommended")
        }
        for n, v in variants.items()
        if "quality" in v
    }


def _generate(cfg: DemoConfig, out: Path, console: Console) -> str:
    from edgezoo import runtime

    lm = runtime.load(out, backend="auto", variant="auto", threads=cfg.threads)
    console.rule(f"[bold]4/5 generate[/] with the runtime: {lm.backend}, variant {lm.variant}")
    console.print(f"[dim]{lm.reason}[/]")
    console.print(cfg.prompt, end="", markup=False, highlight=False)
    text = ""
    for delta in lm.stream(cfg.prompt, max_new_tokens=64, repetition_penalty=1.1):
        text += delta
        console.print(delta, end="", markup=False, highlight=False)
    console.print()
    return cfg.prompt + text


def _pytorch_eager_ms(model_dir: Path, prompt: list[int], new_tokens: int, threads: int) -> float:
    """Median ms per decode step of the same weights in PyTorch eager (3 runs after a warm-up)."""
    import torch

    from edgezoo.zoo.generate import time_greedy_decode
    from edgezoo.zoo.modeldir import load_model

    model = load_model(model_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        time_greedy_decode(model, prompt, 4)
        steps = [s for _ in range(3) for s in time_greedy_decode(model, prompt, new_tokens)[2]]
    finally:
        torch.set_num_threads(before)
    return statistics.median(steps) * 1000


def _bench(cfg: DemoConfig, out: Path, console: Console) -> dict:
    from edgezoo import manifest
    from edgezoo.runtime.api import load_variant
    from edgezoo.runtime.timing import time_decode

    console.rule(
        f"[bold]5/5 benchmark[/] batch 1, 32-token prompt, 128 new tokens, {cfg.threads} threads"
    )
    variants = [n for n, e in manifest.read(out)["variants"].items() if e.get("format") != "ort"]
    prompt = load_variant(out, variants[0]).tokenizer.encode(cfg.prompt * 4).ids[:32]
    base = _pytorch_eager_ms(out, prompt, 128, cfg.threads)  # before any ORT thread pool
    rows = {}
    for name in variants:
        lm = load_variant(out, name, threads=cfg.threads)
        rows[name] = statistics.median(time_decode(lm, [prompt], 128, repeats=3).step_s) * 1000
    table = Table("runtime", "variant", "ms/token (p50)", "tokens/s", "× PyTorch eager fp32")
    table.add_row("PyTorch eager (SDPA)", "fp32", f"{base:.2f}", f"{1000 / base:.0f}", "1.00")
    for name, ms in sorted(rows.items(), key=lambda kv: kv[1]):
        table.add_row("edgezoo ort-cpu", name, f"{ms:.2f}", f"{1000 / ms:.0f}", f"{base / ms:.2f}")
    console.print(table)
    md = [
        "| runtime | variant | ms/token (p50) | tokens/s | × PyTorch eager fp32 |",
        "|---|---|---|---|---|",
        f"| PyTorch eager (SDPA) | fp32 | {base:.2f} | {1000 / base:.0f} | 1.00 |",
    ]
    md += [
        f"| edgezoo ort-cpu | {n} | {ms:.2f} | {1000 / ms:.0f} | {base / ms:.2f} |"
        for n, ms in sorted(rows.items(), key=lambda kv: kv[1])
    ]
    (out / "demo.md").write_text(
        f"Batch 1, 32-token prompt, 128 new tokens, {cfg.threads} threads, trained lm-{cfg.size}.\n\n"
        + "\n".join(md)
        + "\n"
    )
    return {"pytorch_eager_ms": base, "edgezoo_ms": rows, "threads": cfg.threads}
