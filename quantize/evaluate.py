"""Measure one ONNX variant: quality, agreement with fp32, size and CPU batch-1 latency.

Quality is judged on held-out data (perplexity for LMs, accuracy / macro-F1 for
classifiers, chrF of greedy targets for encoder–decoders), never on random weights: on
random weights quantized greedy text diverges within a few tokens whatever the method
(PERF-NOTES §7).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgezoo import heldout, manifest
from edgezoo.quantize import seq2seq_eval
from edgezoo.zoo import data, eval_split
from edgezoo.zoo.metrics import classification_report

BENCH_THREADS = 2


@dataclass
class EvalData:
    """What every variant of one model is measured on."""

    lm_windows: list[np.ndarray] | None = None  # held-out windows (LM): ``edgezoo.heldout``
    rows: list[tuple[str, str]] | None = None  # validation (text, label) rows (classifier)
    pairs: list[tuple[str, str]] | None = None  # held-out (source, target) pairs (s2s)
    source_tokens: int = 512  # s2s: sources cut to the longest training used
    prompt: str = 'def parse_args(argv=None):\n    """Parse the command line."""\n'
    source: str = ""


def eval_data(model_dir: Path, source: str | None = None, max_rows: int = 300) -> EvalData:
    """The model's own validation split (``run.json``), as training's eval.json measured it."""
    family = manifest.read(model_dir).get("family", "lm")
    if family == "lm":
        windows, split = eval_split.lm_windows(model_dir, source)
        return EvalData(lm_windows=windows, source=split.source)
    if family == "s2s":  # the speed rounds translate the first held-out source
        pairs, longest, name = seq2seq_eval.heldout_pairs(model_dir, source)
        return EvalData(pairs=pairs, source_tokens=longest, prompt=pairs[0][0], source=name)
    split = eval_split.eval_split(model_dir, family, source)
    rows = data.read_labelled(split.source, split.text_field, split.label_field)
    return EvalData(
        rows=data.split_labelled(rows, split.val_frac)[1][:max_rows], source=split.source
    )


def score_windows(model, windows: list[np.ndarray]) -> dict[str, float]:
    """Loss, perplexity and token count of a runtime ``LanguageModel`` on ``windows``: each
    scored whole (``score_ids`` with the window's own length), then pooled per token."""
    tally = heldout.LossTally()
    for w in windows:
        score = model.score_ids(w.tolist(), window=len(w))
        tally.add(score["loss"] * score["tokens"], score["tokens"])
    return tally.report()


def measure(
    model_dir: Path,
    variant: str,
    ev: EvalData,
    reference_tokens: list[int] | None = None,
    runs: int = 3,
) -> dict:
    """Quality, latency and (LMs, s2s) greedy agreement of ``variant`` on ONNX Runtime CPU.

    For s2s, ``reference_tokens`` is fp32's token ids per held-out pair, and the result
    carries this variant's under ``greedy_rows`` for the caller to keep (too many for the
    manifest)."""
    from edgezoo.runtime.api import load_variant

    model = load_variant(model_dir, variant, backend="ort-cpu", threads=BENCH_THREADS)
    out: dict = {"threads": BENCH_THREADS, "backend": "ort-cpu", "eval_data": ev.source}
    if ev.pairs is not None:
        out["quality"], rows = seq2seq_eval.score(model, ev.pairs, ev.source_tokens)
        out["latency"] = _decode_latency(model, ev.prompt, runs, ignore_eos=True)
        out["greedy_rows"] = rows
        if reference_tokens is not None:
            out["greedy_agreement"] = seq2seq_eval.agreement(rows, reference_tokens)
        return out
    if ev.lm_windows is not None:
        out["quality"] = score_windows(model, ev.lm_windows)
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


def _decode_latency(model, prompt: str, runs: int, ignore_eos: bool = False) -> dict:
    """Median decode ms per token over ``runs`` generations of 64 tokens (s2s: past </s>,
    so every variant times the same number of steps)."""
    timings, first = [], []
    for _ in range(runs):
        g = model.generate(prompt, max_new_tokens=64, ignore_eos=ignore_eos)
        timings.append(g.decode_s / max(1, len(g.token_ids) - 1) * 1000)
        first.append(g.time_to_first_token_s * 1000)
    return {
        "decode_ms_per_token_p50": statistics.median(timings),
        "first_token_ms": statistics.median(first),
        "runs": runs,
        "new_tokens": len(g.token_ids),
    }


def speed_of(entry: dict) -> float:
    lat = entry.get("latency", {})
    return lat.get("decode_ms_per_token_p50") or lat.get("classify_ms_p50") or float("nan")


def quality_change(entry: dict, base: dict) -> tuple[float, str]:
    """(change in the budgeted unit, human text): perplexity rise in %, chrF or accuracy
    drop in points."""
    q, b = entry["quality"], base["quality"]
    if "chrf" in q:
        drop = b["chrf"] - q["chrf"]
        return drop, f"{-drop:+.2f} chrF points"
    if "perplexity" in q:
        pct = (q["perplexity"] / b["perplexity"] - 1) * 100
        return pct, f"{pct:+.2f}% perplexity"
    drop = (b["accuracy"] - q["accuracy"]) * 100
    return drop, f"{-drop:+.2f} accuracy points"
