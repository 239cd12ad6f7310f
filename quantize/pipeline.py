"""``edgezoo quantize``: make a variant, validate it, measure it, gate it, record it.

Every new graph is built in a temporary file beside the others and renamed into place only
after ONNX Runtime loads it and its logits stay close to the fp32 graph's; then it is
measured (quality on the validation split, greedy agreement with fp32 over 64 steps, size,
CPU batch-1 latency) and the **gate** marks it ``recommended`` for a backend only if it is
clearly faster than fp32 there (medians of interleaved rounds, by a margin: see
``quantize.speed``) *and* within the quality budget. ``runtime.load()`` (``variant="auto"``)
picks the fastest recommended variant. Last, the Optimum / transformers.js file names are
refreshed (``quantize.aliases``) and the model card's variants table rewritten.

An encoder–decoder (s2s) export goes through the same steps with its three graphs as one
variant (``quantize.seq2seq``); its quality is the chrF of greedy targets on held-out
pairs (``quantize.seq2seq_eval``), its budget a chrF drop in points.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgezoo import io_names, manifest
from edgezoo.dirlock import locks_model_dir
from edgezoo.errors import CheckpointError, ConfigError, ExportError
from edgezoo.memory import ensure_available, release_freed
from edgezoo.model_card import write_card
from edgezoo.onnx_files import file_facts, io_signature, publish
from edgezoo.progress import stage
from edgezoo.quantize import graphs, rivals, seq2seq
from edgezoo.quantize.aliases import refresh_aliases
from edgezoo.quantize.evaluate import (
    BENCH_THREADS,
    EvalData,
    eval_data,
    measure,
    quality_change,
    speed_of,
)
from edgezoo.quantize.head_choice import AUTO, choose_head_bits
from edgezoo.quantize.speed import (
    SPEED_MARGIN,
    SPEED_ROUNDS,
    one_loaded_at_a_time,
    round_timer,
    speed_verdict,
)

TARGETS = ("int8", "int8-static", "fp16", "int4")
DEFAULT_BUDGET = {"perplexity_pct": 2.0, "accuracy_points": 1.0, "chrf_points": 1.0}


@dataclass
class QuantizeOptions:
    per_channel: bool = True
    block_size: int | str = "auto"  # weight-only: a size, or auto (graphs.block_sizes)
    symmetric: bool = True
    accuracy_level: int = 4
    # LM head bits in int4 variants: "auto" builds both and keeps int4 when the held-out
    # perplexity stays within ppl_budget_pct of the source (8 without held-out data);
    # 8 or 4 to fix it, None for the same bits as the rest.
    head_bits: int | str | None = AUTO
    embeddings: bool = True
    calibration: str = "minmax"
    calibration_samples: int = 32
    for_tensorrt: bool = False
    ppl_budget_pct: float = DEFAULT_BUDGET["perplexity_pct"]
    acc_budget_points: float = DEFAULT_BUDGET["accuracy_points"]
    chrf_budget_points: float = DEFAULT_BUDGET["chrf_points"]  # s2s: chrF drop allowed
    data: str | None = None
    logit_tolerance: float = 5.0  # sanity bound on |Δ logits| vs fp32; quality is judged on data
    speed_rounds: int = SPEED_ROUNDS  # interleaved fp32/variant timing rounds for the gate
    speed_margin: float = SPEED_MARGIN  # how much faster (by median) counts as faster


def plan(variants: dict[str, dict], to: str, opts: QuantizeOptions) -> list[tuple[str, str, str]]:
    """(new variant name, source variant, method) for ``--to``."""
    if to not in TARGETS:
        raise ConfigError(f"unknown target {to!r}; choose one of {', '.join(TARGETS)}")
    has_gqa = "gqa" in variants
    if "fp32" not in variants:
        raise CheckpointError("no fp32 ONNX graph to quantize; run `edgezoo export` first.")
    if to == "int8":
        jobs = [("int8", "fp32", "int8-dynamic")]
        if has_gqa:  # two int8 forms: which decodes faster depends on the CPU (the gate times both)
            jobs.append(("gqa-int8", "gqa", "weight-only-8"))
            jobs.append(("gqa-int8-dynamic", "gqa", "int8-dynamic-head"))
        return jobs
    if to == "int4":
        # The Optimum-layout int4 graph is what Optimum and transformers.js can run
        # (``model_q4.onnx``); the GQA one is our runtime's fast path.
        portable = ("int4", "opt" if "opt" in variants else "fp32", "weight-only-4")
        return [("gqa-int4", "gqa", "weight-only-4"), portable] if has_gqa else [portable]
    if to == "fp16":
        return [("fp16", "fp32", "fp16")]
    name = "int8-static-trt" if opts.for_tensorrt else "int8-static"
    return [(name, "fp32", "int8-static")]


# Peak resident memory of quantizing, measured per preset (benchmarks/export_cost.py):
# ORT's quantize_dynamic holds the fp32 graph, its quantized copy and its scratch, ~3x.
QUANTIZE_MEMORY_FACTOR = 3
QUANTIZE_MEMORY_OVERHEAD = 1_000_000_000  # onnxruntime, onnx and the scratch of one graph


@locks_model_dir("quantize")
def quantize_model(
    model_dir: str | Path, to: str, opts: QuantizeOptions | None = None, measure_all: bool = True
) -> dict[str, dict]:
    """Create the variants for ``to``; return all variants with their measurements.

    ``measure_all=False`` only builds and validates them: benchmarks of random-init
    models, where quality means nothing, use it."""
    opts = opts or QuantizeOptions()
    model_dir = Path(model_dir)
    info = manifest.read(model_dir)
    s2s = info.get("family") == "s2s"  # three graphs per variant (quantize.seq2seq)
    jobs = seq2seq.plan(info["variants"], to) if s2s else plan(info["variants"], to, opts)
    fp32 = [e["bytes"] for e in info["variants"].values() if e.get("precision") == "fp32"]
    fp32_bytes = max(fp32, default=0)
    ensure_available(
        QUANTIZE_MEMORY_FACTOR * fp32_bytes + QUANTIZE_MEMORY_OVERHEAD, f"quantizing to {to}"
    )
    needs_data = measure_all or to == "int8-static" or s2s  # s2s: the logit check's sources
    ev = eval_data(model_dir, opts.data) if needs_data else EvalData()
    onnx_dir = manifest.onnx_dir(model_dir)
    graph_opts = s2s_options(opts) if s2s else opts  # what each s2s graph is quantized with
    for name, source, method in jobs:
        src_entry = manifest.read(model_dir)["variants"][source]
        if s2s:
            entry = seq2seq.build_variant(
                model_dir,
                name,
                source,
                method,
                lambda src, dst, m=method: _make(src, dst, m, graph_opts, model_dir, ev),
                opts.logit_tolerance,
                _precision(method),
                _backends(src_entry, method, opts),
                seq2seq.check_sources(model_dir, ev.pairs, ev.source_tokens),
            )
            manifest.add_variant(model_dir, name, entry)
            release_freed()
            continue
        file = f"model.{name}.onnx"
        with (
            stage(f"quantize {model_dir.name}: {name} from {source} ({method})"),
            tempfile.TemporaryDirectory(prefix=".quantize-", dir=onnx_dir) as tmp,
        ):
            staged = Path(tmp) / file
            t0 = time.perf_counter()
            src_file = onnx_dir / src_entry["file"]
            if method == "weight-only-4" and opts.head_bits == AUTO and ev.lm_windows:
                details = choose_head_bits(
                    src_file,
                    staged,
                    lambda dst, bits, src=src_file: _weight_only(src, dst, 4, opts, bits),
                    model_dir,
                    ev.lm_windows,
                    opts.ppl_budget_pct,
                    src_entry["graph"],
                )
            else:
                details = _make(src_file, staged, method, opts, model_dir, ev)
            build_s = time.perf_counter() - t0
            delta = _logit_delta(onnx_dir / src_entry["file"], staged, src_entry)
            if not delta <= opts.logit_tolerance:
                raise ExportError(
                    f"{name}: logits moved by {delta:.2f} vs {source} (limit {opts.logit_tolerance}); variant not written."
                )
            entry = {
                "file": file,
                "graph": src_entry["graph"],
                "precision": _precision(method),
                "method": method,
                "source_variant": source,
                "backends": _backends(src_entry, method, opts),
                "quantization": details,
                **decode_rows(details),
                "max_abs_diff_vs_fp32": delta,
                "build_s": round(build_s, 2),
                **io_signature(staged),
                **file_facts(staged),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            publish(staged, onnx_dir)
        manifest.add_variant(model_dir, name, entry)
        release_freed()  # the source graph and both sessions are gone: give the memory back
    if measure_all:
        measure_and_gate(model_dir, ev, opts)
    refresh_aliases(model_dir)  # model_quantized.onnx & co. follow the variants just written
    write_card(model_dir)  # the card's variants table, with the gate's verdicts
    return manifest.read(model_dir)["variants"]


def measure_and_gate(model_dir: Path, ev: EvalData, opts: QuantizeOptions) -> dict[str, dict]:
    """Measure every variant in one run (timings are only comparable within a run), then
    gate each compressed one against the fastest fp32 graph — the one fp32 users get."""
    variants = manifest.read(model_dir)["variants"]
    names = [n for n, e in variants.items() if e.get("format") != "ort"]
    fp32 = [n for n in names if variants[n]["precision"] == "fp32"]
    rows: dict[str, list] = {}  # s2s: greedy token ids per held-out pair, kept out of the manifest
    for name in fp32:
        with stage(f"measure {name}"):
            variants[name].update(measure(model_dir, name, ev))
            rows[name] = variants[name].pop("greedy_rows", None)
        release_freed()
    best = min(fp32, key=lambda n: speed_of(variants[n]))
    for name in names:
        entry = variants[name]
        if entry["precision"] == "fp32":
            entry.pop("gate", None), entry.pop("recommended", None)
            continue
        source = entry.get("source_variant", best)
        reference = rows.get(source) or variants[source].get("greedy_tokens")
        with stage(f"measure {name}"):
            entry.update(measure(model_dir, name, ev, reference))
            entry.pop("greedy_rows", None)
        with stage(f"time {name} against {best} ({opts.speed_rounds} interleaved rounds)"):
            speed = _timed_rounds(model_dir, best, name, ev, opts)
        entry.update(_gate(entry, variants[best], best, opts, speed))
        release_freed()
    from edgezoo.runtime.api import load_variant

    # Two graphs of one precision (the int8 GQA forms): which one a precision name loads
    rivals.prefer(
        variants,
        lambda name: load_variant(model_dir, name, "ort-cpu", BENCH_THREADS),
        ev.prompt,
        opts.speed_rounds,
        opts.speed_margin,
    )
    data = manifest.read(model_dir)
    data["variants"].update({n: variants[n] for n in names})
    data["quality_budget"] = {
        "perplexity_pct": opts.ppl_budget_pct,
        "accuracy_points": opts.acc_budget_points,
        "chrf_points": opts.chrf_budget_points,
    }
    manifest.write(model_dir, data)
    return data["variants"]


def decode_rows(details: dict) -> dict:
    """A graph with per-row activation scales decodes two rows a call (the token and a
    filler): the attention kernel rounds a one-row call differently from a several-row one,
    and int8 rounding can magnify that ~1e-6 into a flipped token. With both rows its
    speculative checks give its plain loop's logits bit for bit (tested)."""
    return {"decode_rows": 2} if details.get("activation_scales") == "per row" else {}


def _make(
    src: Path, dst: Path, method: str, opts: QuantizeOptions, model_dir: Path, ev: EvalData
) -> dict:
    if method in ("int8-dynamic", "int8-dynamic-head"):
        # The GQA form is the one speculative decoding and batches use: one scale per row, so
        # that a token's logits do not depend on the tokens it shares a call with.
        head = method.endswith("head")
        return graphs.int8_dynamic(src, dst, opts.per_channel, with_head=head, per_row=head)
    if method.startswith("weight-only"):
        bits = int(method.rsplit("-", 1)[1])
        head = 8 if opts.head_bits == AUTO else opts.head_bits  # auto without data: int8
        return _weight_only(src, dst, bits, opts, head if bits == 4 else None)
    if method == "fp16":
        graphs.fp16(src, dst)
        return {"keep_io_types": True, "kept_fp32": graphs.FP16_KEEP_FP32}
    feeds = _calibration_feeds(src, ev, opts.calibration_samples)
    details = graphs.int8_static(
        src, dst, graphs.FeedReader(feeds), opts.calibration, opts.per_channel, opts.for_tensorrt
    )
    return {**details, "calibration_samples": len(feeds)}


def s2s_options(opts: QuantizeOptions) -> QuantizeOptions:
    """An encoder–decoder keeps int8 blocks of 32 under ``block_size="auto"``: with each
    matrix's widest block the test model's int8 variant lost 1.6 chrF points against fp32
    on an AVX2-only host, within 1.5 with blocks of 32 (the int8 kernel's activations share
    a scale per block). LMs keep the widest blocks (trained ``nano`` and ``small``:
    perplexity +0.01 % either way, measured on an AVX-512 host)."""
    if opts.block_size == "auto":
        return replace(opts, block_size=graphs.INT4_BLOCK)
    return opts


def _weight_only(src: Path, dst: Path, bits: int, opts: QuantizeOptions, head: int | None) -> dict:
    return graphs.weight_only(
        src,
        dst,
        bits,
        opts.block_size,
        opts.symmetric,
        opts.accuracy_level,
        head,
        opts.embeddings and bits == 4,
    )


def _cpu_session(path: Path):
    """A quiet CPU session (errors only: not ORT's note on the GQA graph's overridable
    ``logits_from`` input)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _calibration_feeds(src: Path, ev: EvalData, samples: int) -> list[dict[str, np.ndarray]]:
    """Inputs drawn from the model's own validation data, in the graph's input layout."""

    from edgezoo.runtime.api import load_tokenizer

    inputs = _cpu_session(src).get_inputs()
    feeds = []
    if ev.lm_windows is not None:
        first, *rest = ev.lm_windows  # back to one stream (windows share their edge token)
        stream = np.concatenate([first, *(w[1:] for w in rest)])
        seqs = [stream[i : i + 64][None] for i in range(0, len(stream) - 64, 64)][:samples]
    else:
        tok = load_tokenizer(src.parent.parent)
        seqs = [np.array([tok.encode(text).ids[:128]], np.int64) for text, _ in ev.rows[:samples]]
    for ids in seqs:
        feed = {}
        for spec in inputs:
            if spec.name == "input_ids":
                feed[spec.name] = ids
            elif spec.name in ("attention_mask", "token_type_ids"):
                feed[spec.name] = (
                    np.ones_like(ids) if spec.name == "attention_mask" else np.zeros_like(ids)
                )
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
            elif io_names.is_past(spec.name):
                feed[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
        feeds.append(feed)
    if not feeds:
        raise ConfigError("no calibration data: the validation split is too small; pass --data.")
    return feeds


def _logit_delta(reference: Path, candidate: Path, entry: dict) -> float:
    """Max |Δ logits| on one fixed prompt: a sanity check that the graph still works."""

    def run(path: Path) -> np.ndarray:
        try:
            sess = _cpu_session(path)
        except Exception as e:  # ORT error: the variant is broken
            raise ExportError(f"{path.name} does not load in ONNX Runtime: {e}") from e
        ids = np.array([[1, 100, 200, 300, 150, 50, 7, 9]], np.int64)
        feeds = {}
        for spec in sess.get_inputs():
            if spec.name == "input_ids":
                feeds[spec.name] = ids
            elif spec.name == "attention_mask":
                feeds[spec.name] = np.ones_like(ids)
            elif spec.name == "token_type_ids":
                feeds[spec.name] = np.zeros_like(ids)
            elif spec.name == "position_ids":
                feeds[spec.name] = np.arange(8, dtype=np.int64)[None]
            else:
                kind = np.float16 if "float16" in spec.type else np.float32
                feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), kind)
        try:
            return sess.run(["logits"], feeds)[0].astype(np.float32)
        except Exception as e:  # ORT error: the variant is broken
            raise ExportError(f"{path.name} does not run in ONNX Runtime: {e}") from e

    return float(np.abs(run(reference) - run(candidate)).max())


def _precision(method: str) -> str:
    return {
        "int8-dynamic": "int8",
        "int8-dynamic-head": "int8",
        "weight-only-8": "int8",
        "weight-only-4": "int4",
        "fp16": "fp16",
        "int8-static": "int8",
    }[method]


def _backends(src_entry: dict, method: str, opts: QuantizeOptions) -> list[str]:
    if method == "int8-static" and opts.for_tensorrt:
        return ["ort-cpu", "ort-trt", "tensorrt"]  # symmetric QDQ is what TensorRT's int8 wants
    if method == "fp16":
        return list(src_entry["backends"])
    return [b for b in src_entry["backends"] if b in ("ort-cpu", "ort-cuda")]


def _timed_rounds(
    model_dir: Path, base_name: str, name: str, ev: EvalData, opts: QuantizeOptions
) -> dict:
    """fp32 and ``name`` timed in alternating rounds, one model loaded at a time (see
    quantize.speed): each round loads the model, runs once to warm it, then times a run."""
    from edgezoo.runtime.api import load_variant

    text = ev.rows[0][0] if ev.rows else None

    def timed(variant: str) -> float:
        timer = round_timer(
            load_variant(model_dir, variant, "ort-cpu", BENCH_THREADS), ev.prompt, text
        )
        timer()  # the first run allocates buffers and arenas: not a fair round
        return timer()

    ms = one_loaded_at_a_time([base_name, name], timed, opts.speed_rounds)
    return speed_verdict(ms[base_name], ms[name], opts.speed_margin)


def _gate(
    entry: dict, base: dict, base_name: str, opts: QuantizeOptions, speed: dict | None = None
) -> dict:
    """Recommended for ort-cpu only if *clearly* faster than fp32 (by ``speed_margin``, on
    the medians of interleaved rounds) *and* within the quality budget. Without rounds
    (``speed`` None) the two p50 latencies are the only round. (GPU backends can only be
    gated where a GPU measured them.)"""
    if speed is None:
        speed = speed_verdict([speed_of(base)], [speed_of(entry)], opts.speed_margin)
    change, text = quality_change(entry, base)
    quality = entry["quality"]
    budget = (
        opts.ppl_budget_pct
        if "perplexity" in quality
        else opts.chrf_budget_points
        if "chrf" in quality
        else opts.acc_budget_points
    )
    verdict = {
        "speedup": speed["speedup"],
        "speed_verdict": speed["verdict"],
        "speed": speed,
        "quality_change": text,
        "within_budget": change <= budget,
        "faster": speed["verdict"] == "faster",
        "baseline": base_name,
    }
    recommended = {"ort-cpu": verdict} if verdict["faster"] and verdict["within_budget"] else {}
    return {"gate": {"ort-cpu": verdict}, "recommended": recommended}
