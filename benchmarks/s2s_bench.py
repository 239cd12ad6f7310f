"""``python -m benchmarks.s2s_bench``: encoder–decoder (s2s) decode speed, edgezoo beside its peers.

For each size × precision, three runtimes decode the same sources greedily on the same
weights at batch 1 with the same thread count:

* ``edgezoo``: ``runtime.load(dir)`` → ``Seq2SeqModel`` (our loop over our three graphs);
* ``optimum-ort``: Optimum's ``ORTModelForSeq2SeqLM.generate`` over the *same* graph files
  (its loop and torch glue around the same ONNX Runtime sessions);
* ``ctranslate2``: CTranslate2's ``TransformersConverter`` on the model dir, then its
  ``Translator`` (its own C++ kernels; int8 = ``compute_type="int8"``, no int4 on CPU).

Each call is timed whole (encoder included): a 1-token call and an N-token call per source,
so ``decode ms/token = (t(N) − t(1)) / (N − 1)`` and ``tokens/s = N / t(N)`` — the same
arithmetic for every runtime, since peers have no per-step hook that costs nothing. EOS is
ignored everywhere so every call makes exactly N tokens. Runtimes are interleaved within a
round (order rotated), medians over rounds. The fp32 tokens of every runtime are compared
with edgezoo's fp32 tokens (agreement = matching prefix / N, averaged over sources).

Models are random-init presets (speed does not depend on the weights; the agreement check
does not need trained ones), exported once and cached under ``--work``; int8 / int4 are
``edgezoo quantize`` variants where it can make them for s2s. A runtime that fails to
install, convert or load becomes a row with its error, never a crash.

    python -m benchmarks.s2s_bench --sizes nano,micro --precisions fp32,int8,int4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgezoo import atomic, manifest

RESULTS = Path(__file__).parent / "results"
RUNTIMES = ("edgezoo", "optimum-ort", "ctranslate2")
# Random weights drawn this wide (as tests/test_peers.py does) give varied greedy tokens, so
# the agreement check means something; the default init decodes <pad> forever.
WEIGHT_STD = 0.2

# (source ids, new tokens) -> the generated ids, EOS ignored (exactly that many).
Run = Callable[[list[int], int], list[int]]


@dataclass
class Loaded:
    run: Run
    note: str
    load_s: float
    step_s: list[float] = field(default_factory=list)  # in-loop steps, where the runtime says


@dataclass
class Samples:
    """One runtime's timings for one size × precision, per round and source."""

    first_s: list[list[float]] = field(default_factory=list)  # t(1) per round, per source
    total_s: list[list[float]] = field(default_factory=list)  # t(N)
    tokens: list[list[int]] = field(default_factory=list)  # last round's tokens per source


# ---------------------------------------------------------------------- model dirs ---------


def prepare(size: str, work: Path, precisions: list[str]) -> tuple[Path, dict[str, str]]:
    """A random-init s2s preset exported (fp32) and quantized to each other precision.

    Returns the dir and, per precision that could not be made, why."""
    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.zoo.corpus import stdlib_docstring_pairs
    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.s2s_data import training_texts
    from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer

    out = work / f"s2s-{size}"
    if "fp32" not in _variants(out):
        import torch

        torch.manual_seed(0)
        cfg = make_config("s2s", size)
        model = build_model(cfg).eval()
        with torch.no_grad():  # wider than the trained init: at it, greedy repeats one token
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, WEIGHT_STD)
        save_model_dir(model, out)
        texts = training_texts(stdlib_docstring_pairs())
        save_tokenizer(
            train_tokenizer(texts, cfg.vocab_size, max_chars=2_000_000),
            out,
            cfg.max_position_embeddings,
        )
        # Weights this wide make activations large and attention peaked: micro's cached
        # decoder graph differed from PyTorch by 4.8e-4 (> the default 1e-4). 1e-3 is loose
        # enough for a speed benchmark; the export's greedy tokens must still be exact.
        to_onnx(out, greedy_steps=8, tolerance=1e-3)
    missing: dict[str, str] = {}
    for precision in precisions:
        if precision == "fp32" or precision in _variants(out):
            continue
        try:
            from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model

            quantize_model(out, precision, QuantizeOptions(), measure_all=False)
        except Exception as e:  # e.g. a quantize that does not handle s2s yet
            missing[precision] = _one_line(e)
    return out, missing


def _variants(model_dir: Path) -> dict:
    try:
        return manifest.read(model_dir)["variants"]
    except Exception:
        return {}


def sources(model_dir: Path, count: int, max_tokens: int) -> list[list[int]]:
    """``count`` stdlib functions (spread over the corpus), as source ids of at most
    ``max_tokens`` tokens: the same set for every runtime and size."""
    from tokenizers import Tokenizer

    from edgezoo.zoo.corpus import stdlib_docstring_pairs

    pairs = stdlib_docstring_pairs()
    picked = pairs[:: max(1, len(pairs) // count)][:count]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return [tok.encode(src).ids[:max_tokens] for _, src, _ in picked]


# ---------------------------------------------------------------------- runtimes -----------


def load_edgezoo(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    from edgezoo import runtime
    from edgezoo.runtime.sampling import SamplingParams

    t0 = time.perf_counter()
    model = runtime.load(model_dir, backend="ort-cpu", variant=precision, threads=threads)
    load_s = time.perf_counter() - t0

    steps: list[float] = []

    def run(ids: list[int], n: int) -> list[int]:
        params = SamplingParams(max_new_tokens=n, ignore_eos=True)
        g = model.generate_ids([ids], params)[0]
        if n > 1:
            steps.extend(g.step_s)
        return g.token_ids

    return Loaded(run, f"edgezoo Seq2SeqModel, variant {model.variant}", load_s, steps)


def load_optimum(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    entry = _variants(model_dir).get(precision)
    if entry is None:
        raise RuntimeError(f"no {precision} variant in the manifest")
    files = {role: g["file"] for role, g in entry.get("graphs", {}).items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = ORTModelForSeq2SeqLM.from_pretrained(
        model_dir,
        subfolder="onnx",
        encoder_file_name=files.get("encoder"),
        decoder_file_name=files.get("decoder"),
        decoder_with_past_file_name=files.get("decoder_with_past"),
        session_options=options,
    )
    load_s = time.perf_counter() - t0

    def run(ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                do_sample=False,
                num_beams=1,
                eos_token_id=None,  # EOS ignored: exactly n tokens
            )
        return out[0, 1:].tolist()  # without the decoder start token

    import optimum.version

    note = (
        f"optimum {optimum.version.__version__} ORTModelForSeq2SeqLM.generate, same "
        f"{precision} graph files"
    )
    return Loaded(run, note, load_s)


def load_ctranslate2(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    import ctranslate2
    from tokenizers import Tokenizer

    compute = {"fp32": "float32", "int8": "int8"}.get(precision)
    if compute is None:
        raise RuntimeError(
            f"ctranslate2 has no {precision} compute type on CPU (int8 is its least)"
        )
    folder = work / f"ct2-{model_dir.name}"
    stamp = folder / "edgezoo-source.json"
    source = {"weights": (model_dir / "model.safetensors").stat().st_mtime_ns}
    source["ctranslate2"] = ctranslate2.__version__
    if not stamp.is_file() or json.loads(stamp.read_text()) != source:
        with atomic.atomic_dir(folder) as tmp:
            ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
                str(tmp), force=True
            )
            atomic.write_json(tmp / stamp.name, source)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = json.loads((folder / "shared_vocabulary.json").read_text())
    if any(tok.id_to_token(i) != t for i, t in enumerate(vocab[: tok.get_vocab_size()])):
        raise RuntimeError("ctranslate2's vocabulary order differs from tokenizer.json")
    index = {t: i for i, t in enumerate(vocab)}
    t0 = time.perf_counter()
    translator = ctranslate2.Translator(
        str(folder), device="cpu", compute_type=compute, intra_threads=threads, inter_threads=1
    )
    load_s = time.perf_counter() - t0

    def run(ids: list[int], n: int) -> list[int]:
        tokens = [vocab[i] for i in ids]
        result = translator.translate_batch(
            [tokens], beam_size=1, max_decoding_length=n, end_token=[], return_scores=False
        )
        return [index[t] for t in result[0].hypotheses[0]]

    note = (
        f"ctranslate2 {ctranslate2.__version__} Translator(compute_type={compute}) "
        "on its fp32 conversion"
    )
    return Loaded(run, note, load_s)


LOADERS = {"edgezoo": load_edgezoo, "optimum-ort": load_optimum, "ctranslate2": load_ctranslate2}


# ---------------------------------------------------------------------- measuring ----------


def timed(run: Run, ids: list[int], n: int) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    out = run(ids, n)
    return out, time.perf_counter() - t0


def measure(
    loaded: dict[str, Loaded], srcs: list[list[int]], tokens: int, rounds: int
) -> dict[str, Samples]:
    """Interleaved rounds: every runtime decodes every source (1 then N tokens) per round,
    the runtimes' order rotated each round so none always runs first on a warm cache."""
    names = list(loaded)
    for name in names:  # warm-up: thread pools, allocations, first-call kernels
        loaded[name].run(srcs[0], 4)
        loaded[name].step_s.clear()
    samples = {name: Samples() for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, s = loaded[name].run, samples[name]
            firsts, totals, outs = [], [], []
            for ids in srcs:
                _, t1 = timed(run, ids, 1)
                out, tn = timed(run, ids, tokens)
                if len(out) != tokens:
                    raise RuntimeError(f"{name} made {len(out)} tokens, not {tokens}")
                firsts.append(t1)
                totals.append(tn)
                outs.append(out)
            s.first_s.append(firsts)
            s.total_s.append(totals)
            s.tokens = outs
    return samples


def summarise(s: Samples, tokens: int, reference: list[list[int]] | None) -> dict:
    """Medians over every (round, source) call: on a shared machine a preempted call is an
    outlier a mean would carry."""
    firsts = [t1 for f in s.first_s for t1 in f]
    totals = [tn for t in s.total_s for tn in t]
    decode = [(tn - t1) / (tokens - 1) for t1, tn in zip(firsts, totals, strict=True)]
    # Best case: each source's fastest calls over the rounds (what a quiet machine gives;
    # a preempted thread-pool worker only ever makes a call slower), median over sources.
    best_first = [min(f) for f in zip(*s.first_s, strict=True)]
    best_total = [min(t) for t in zip(*s.total_s, strict=True)]
    best_decode = [(tn - t1) / (tokens - 1) for t1, tn in zip(best_first, best_total, strict=True)]
    row = {
        "decode_ms_per_token": 1e3 * statistics.median(decode),
        "tokens_per_s": tokens / statistics.median(totals),
        "first_token_ms": 1e3 * statistics.median(firsts),
        "best_decode_ms_per_token": 1e3 * statistics.median(best_decode),
        "best_tokens_per_s": tokens / statistics.median(best_total),
        "calls": len(totals),
    }
    if reference is not None:
        row["agreement"], row["exact_sources"] = agreement(s.tokens, reference, tokens)
    return row


def agreement(got: list[list[int]], want: list[list[int]], tokens: int) -> tuple[float, int]:
    """(mean share of each source's tokens before the first difference, sources all equal)."""
    matches = [_prefix(a, b) / tokens for a, b in zip(got, want, strict=True)]
    return statistics.mean(matches), sum(m == 1.0 for m in matches)


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]


# ---------------------------------------------------------------------- the run ------------


def run_bench(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    precisions = args.precisions.split(",")
    runtimes = args.runtimes.split(",")
    thread_counts = [int(t) for t in str(args.threads).split(",")]
    rows: list[dict] = []
    load_avg: list[float] = []  # 1-minute load average around each measurement
    for size in args.sizes.split(","):
        model_dir, missing = prepare(size, work, precisions)
        srcs = sources(model_dir, args.sources, args.source_tokens)
        reference: dict[int, list[list[int]]] = {}  # threads -> edgezoo's fp32 tokens
        for precision in precisions:
            for threads in thread_counts:
                base = {"size": size, "precision": precision, "threads": threads}
                if precision in missing:
                    rows += [{**base, "runtime": n, "error": missing[precision]} for n in runtimes]
                    continue
                load_avg.append(os.getloadavg()[0])
                block = measure_block(model_dir, base, runtimes, srcs, args, work, reference)
                load_avg.append(os.getloadavg()[0])
                rows += block
    return {
        "rows": rows,
        "settings": {
            "sizes": args.sizes,
            "precisions": precisions,
            "tokens": args.tokens,
            "rounds": args.rounds,
            "sources": args.sources,
            "source_tokens": args.source_tokens,
            "threads": thread_counts,
            "batch": 1,
        },
        "machine": _machine(),
        "load_avg": load_avg,
    }


def measure_block(
    model_dir: Path,
    base: dict,
    runtimes: list[str],
    srcs: list[list[int]],
    args: argparse.Namespace,
    work: Path,
    reference: dict[int, list[list[int]]],
) -> list[dict]:
    """Every runtime at one size × precision × thread count, interleaved; one row each."""
    precision, threads = base["precision"], base["threads"]
    loaded: dict[str, Loaded] = {}
    rows: dict[str, dict] = {}
    for name in runtimes:
        try:
            loaded[name] = LOADERS[name](model_dir, precision, threads, work)
        except Exception as e:
            rows[name] = {**base, "runtime": name, "error": _one_line(e)}
    samples = measure(loaded, srcs, args.tokens, args.rounds)
    if precision == "fp32" and "edgezoo" in samples:
        reference[threads] = samples["edgezoo"].tokens
    for name, s in samples.items():
        row = {**base, "runtime": name, "note": loaded[name].note, "load_s": loaded[name].load_s}
        if loaded[name].step_s:  # what the loop itself measured, for comparison
            row["in_loop_step_ms_p50"] = 1e3 * statistics.median(loaded[name].step_s)
        row.update(summarise(s, args.tokens, reference.get(threads)))
        if precision != "fp32" and name != "edgezoo" and "edgezoo" in samples:
            same = agreement(s.tokens, samples["edgezoo"].tokens, args.tokens)
            row["agreement_same_precision"], row["exact_same_precision"] = same
        row["distinct_tokens"] = len({t for out in s.tokens for t in out})
        rows[name] = row
        print(json.dumps(row), flush=True)
    return [rows[name] for name in runtimes if name in rows]


def _machine() -> dict:
    from benchmarks.bench import machine

    info = machine()
    for dist in ("optimum", "ctranslate2", "transformers"):
        try:
            import importlib.metadata

            info[dist] = importlib.metadata.version(dist)
        except Exception:
            info[dist] = None
    return info


def markdown(results: dict) -> str:
    st = results["settings"]
    lines = [
        "| size | precision | threads | runtime | decode ms/token (median · best) | "
        "tokens/s (median · best) | first token ms | agreement with edgezoo fp32 | "
        "distinct tokens | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        head = f"| {r['size']} | {r['precision']} | {r['threads']} | {r['runtime']} |"
        if "error" in r:
            lines.append(f"{head} — | — | — | — | — | not run: {r['error']} |")
            continue
        agree = (
            f"{r['agreement']:.0%} ({r['exact_sources']}/{st['sources']} exact)"
            if "agreement" in r
            else "—"
        )
        if "agreement_same_precision" in r:
            agree += (
                f"; vs edgezoo {r['precision']}: {r['agreement_same_precision']:.0%} "
                f"({r['exact_same_precision']}/{st['sources']})"
            )
        note = r["note"]
        if "in_loop_step_ms_p50" in r:
            note += f"; its loop's own step p50 {r['in_loop_step_ms_p50']:.2f} ms"
        lines.append(
            f"{head} {r['decode_ms_per_token']:.2f} · {r['best_decode_ms_per_token']:.2f} | "
            f"{r['tokens_per_s']:.0f} · {r['best_tokens_per_s']:.0f} | "
            f"{r['first_token_ms']:.2f} | {agree} | {r['distinct_tokens']} | {note} |"
        )
    m = results["machine"]
    lines.append(
        f"\nBatch 1, greedy, {st['tokens']} new tokens (EOS ignored) "
        f"after each of {st['sources']} stdlib functions (at most {st['source_tokens']} source "
        f"tokens); decode ms/token = (t({st['tokens']}) − t(1)) / {st['tokens'] - 1} of whole "
        f"calls, tokens/s = {st['tokens']} / t({st['tokens']}) (encoder included), first token "
        f"= t(1); median = over {st['rounds']} interleaved rounds × {st['sources']} sources "
        "(runtimes rotated per round); best = each source's fastest call over the rounds, "
        "median over sources (what a quiet machine approaches). "
        "Threads: ONNX Runtime intra-op N (edgezoo, optimum-ort; optimum's torch glue N too), "
        "ctranslate2 intra_threads N, inter 1. "
        f"Random-init presets, weights ~N(0, {WEIGHT_STD}) (speed does not depend on the "
        "weights; this wide, greedy tokens vary): agreement is the share of "
        "each source's tokens that match edgezoo's fp32 greedy tokens before the first "
        "difference (quantized rows differ: random wide weights have near-tied logits, "
        "which 8-/4-bit weights reorder; peers' quantized rows are also compared with "
        "edgezoo's at their precision). optimum-ort runs the same graph "
        "files as edgezoo, so its gap is the generation loop's; ctranslate2 runs its own "
        f"conversion. Machine: {m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}, "
        f"optimum {m.get('optimum')}, ctranslate2 {m.get('ctranslate2')}, {m['date']}. "
        f"A SHORT run on a machine shared with other jobs (1-minute load average "
        f"{min(results['load_avg'], default=0):.1f}–{max(results['load_avg'], default=0):.1f} "
        f"on {m['cores']} cores during the measurements): oversubscribed, a thread pool that "
        "waits for a preempted worker stalls a whole step, which inflates the medians; the "
        "best-case columns and the 1-thread rows (no pool to wait on) are closer to the "
        "runtimes' own speed."
    )
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="nano,micro")
    p.add_argument("--precisions", default="fp32,int8,int4")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--tokens", type=int, default=32, help="new tokens per timed call")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sources", type=int, default=4)
    p.add_argument("--source-tokens", type=int, default=64)
    p.add_argument(
        "--threads", default="2,1", help="thread counts, comma-separated (each runtime gets N)"
    )
    p.add_argument("--work", default="runs/bench")
    p.add_argument("--out", default=str(RESULTS / "s2s_bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.tokens < 2:
        p.error("--tokens must be at least 2 (decode ms/token needs t(N) − t(1))")
    results = run_bench(args)
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), results)
    atomic.write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
