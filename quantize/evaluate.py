"""Measure one ONNX variant: quality, agreement with fp32, size and CPU batch-1 latency.

Quality is judged on held-out data (perplexity for LMs, accuracy / macro-F1 for
classifiers), never on random weights: on random weights quantized greedy text diverges
within a few tokens whatever the method (PERF-NOTES §7).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgezoo import manifest
from edgezoo.jsonfile import read_object
from edgezoo.zoo import corpus, data
from edgezoo.zoo.metrics import classification_report
from edgezoo.zoo.tokenizer import load_tokenizer

BENCH_THREADS = 2


@dataclass
class EvalData:
    """What every variant of one model is measured on."""

    lm_tokens: list[int] | None = None  # validation tokens (LM)
    rows: list[tuple[str, str]] | None = None  # validation (text, label) rows (classifier)
    prompt: str = 'def parse_args(argv=None):\n    """Parse the command line."""\n'
    source: str = ""


def eval_data(
    model_dir: Path, source: str | None = None, max_tokens: int = 4096, max_rows: int = 300
) -> EvalData:
    """The model's own validation split: from ``run.json`` if it was trained here."""
    run = model_dir / "run.json"
    fix = "restore it, or delete it and pass --data to choose the evaluation data."
    settings = read_object(run, fix) if run.is_file() else {}
    family = manifest.read(model_dir).get("family", "lm")
    source = (
        source
        or settings.get("data")
        or (corpus.LM_CORPUS if family == "lm" else corpus.CLS_CORPUS)
    )
    val_frac = settings.get("val_frac", 0.05)
    if family == "lm":
        splits = data.token_cache(source, load_tokenizer(model_dir), val_frac)
        return EvalData(lm_tokens=np.asarray(splits.val[:max_tokens]).tolist(), source=source)
    rows = data.split_labelled(data.read_labelled(source), val_frac)[1][:max_rows]
    return EvalData(rows=rows, source=source)


def measure(
    model_dir: Path,
    variant: str,
    ev: EvalData,
    reference_tokens: list[int] | None = None,
    runs: int = 3,
) -> dict:
    """Quality, latency and (for LMs) greedy agreement of ``variant`` on ONNX Runtime CPU."""
    from edgezoo.runtime.api import load_variant

    model = load_variant(model_dir, variant, backend="ort-cpu", threads=BENCH_THREADS)
    out: dict = {"threads": BENCH_THREADS, "backend": "ort-cpu", "eval_data": ev.source}
    if ev.lm_tokens is not None:
        score = model.score_ids(ev.lm_tokens, window=min(128, model.context))
        out["quality"] = {
            "perplexity": score["perplexity"],
            "loss": score["loss"],
            "tokens": score["tokens"],
        }
        timings, tokens = [], []
        for _ in range(runs):
            g = model.generate(ev.prompt, max_new_tokens=64)
            timings.append(g.decode_s / max(1, len(g.token_ids) - 1) * 1000)
            tokens = g.token_ids
        out["latency"] = {
            "decode_ms_per_token_p50": statistics.median(timings),
            "first_token_ms": g.time_to_first_token_s * 1000,
            "runs": runs,
            "new_tokens": len(tokens),
        }
        out["greedy_tokens"] = tokens
        if reference_tokens is not None:
            same = [a == b for a, b in zip(tokens, reference_tokens, strict=False)]
            first = next((i for i, s in enumerate(same) if not s), None)
            out["greedy_agreement"] = {
                "matching": sum(same),
                "of": len(same),
                "first_divergence": first,
            }
    else:
        labels = model.labels
        probs = model.predict_proba([t for t, _ in ev.rows])
        truth = np.array([labels.index(label) for _, label in ev.rows])
        report = classification_report(truth, probs.argmax(-1), len(labels))
        out["quality"] = {
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "examples": len(ev.rows),
        }
        text = ev.rows[0][0]
        timings = []
        for _ in range(max(runs, 10)):
            t0 = time.perf_counter()
            model.predict_proba(text)
            timings.append((time.perf_counter() - t0) * 1000)
        out["latency"] = {"classify_ms_p50": statistics.median(timings), "runs": len(timings)}
    return out


def speed_of(entry: dict) -> float:
    lat = entry.get("latency", {})
    return lat.get("decode_ms_per_token_p50") or lat.get("classify_ms_p50") or float("nan")


def quality_change(entry: dict, base: dict) -> tuple[float, str]:
    """(change in the budgeted unit, human text): perplexity rise in %, accuracy drop in points."""
    q, b = entry["quality"], base["quality"]
    if "perplexity" in q:
        pct = (q["perplexity"] / b["perplexity"] - 1) * 100
        return pct, f"{pct:+.2f}% perplexity"
    drop = (b["accuracy"] - q["accuracy"]) * 100
    return drop, f"{-drop:+.2f} accuracy points"
