"""``edgezoo demo``: the main job end to end on the built-in corpus, with progress.

Trains a small LM on the Python standard library, measures it against the unigram
baseline, and writes a sample. Each later stage (export, quantize, run, benchmark) adds
its step here as it lands, so the demo always exercises everything that exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    size: str = "nano"
    steps: int = 600
    batch_size: int = 16
    context: int = 256
    prompt: str = "def read_config(path):\n"


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    from zoo import corpus
    from zoo.checkpoint import list_checkpoints
    from zoo.data import token_cache
    from zoo.generate import generate_ids
    from zoo.metrics import unigram_loss
    from zoo.modeldir import load_model
    from zoo.tokenizer import load_tokenizer
    from zoo.train import TrainConfig, train

    console = console or Console()
    out = Path(cfg.out)
    report: dict = {"out": str(out)}
    t0 = time.perf_counter()

    console.rule(
        f"[bold]1/2 train[/] lm-{cfg.size} on {corpus.LM_CORPUS} ({len(corpus.stdlib_files())} stdlib files)"
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
        resume=bool(list_checkpoints(out)),  # a second run reuses or finishes the first
    )
    result = train(train_cfg)
    tok = load_tokenizer(out)
    splits = token_cache(corpus.LM_CORPUS, tok, train_cfg.val_frac)
    baseline = unigram_loss(splits.train, splits.val, tok.get_vocab_size())
    report["train"] = {
        "steps": result.steps,
        "val_loss": result.metrics["val_loss"],
        "val_ppl": result.metrics["val_ppl"],
        "unigram_val_loss": baseline,
        "train_tokens_per_s": result.tokens_per_s,
    }
    console.print(
        f"val loss {result.metrics['val_loss']:.3f} (perplexity {result.metrics['val_ppl']:.1f}) "
        f"vs unigram baseline {baseline:.3f}; {result.tokens_per_s:,.0f} train tokens/s"
    )

    console.rule("[bold]2/2 generate[/] (PyTorch reference, greedy)")
    model = load_model(out)
    prompt_ids = tok.encode(cfg.prompt).ids
    new_ids = generate_ids(model, prompt_ids, 48, eos_id=tok.token_to_id("</s>"))
    sample = cfg.prompt + tok.decode(new_ids)
    console.print(sample, markup=False, highlight=False)
    report["sample"] = sample
    report["elapsed_s"] = time.perf_counter() - t0
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    console.rule(f"done in {report['elapsed_s']:.0f} s — model dir: {out}")
    return report
