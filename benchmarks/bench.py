"""``python -m benchmarks.bench``: decode latency per model size × backend × precision × batch × prompt.

For each size a random-init model dir is built once (cached under ``--work``), exported
and quantized; then every variant is timed with warm-up and repeats, threads fixed:

* ``pp{N}``: prompt processing, tokens/s for an N-token prompt (llama-bench's naming), and
  time to first token;
* ``tg{N}``: token generation, per-token latency p50/p95 over N new tokens and tokens/s;
* achieved memory bandwidth = weight bytes read per token × tokens/s (as gpt-fast reports)
  and the physical floor = weight bytes ÷ measured copy bandwidth;
* load time, file size and peak RSS (the kernel's high-water mark, reset per variant).

Random weights are fine for speed and the output says so; quality comes from
``edgezoo quantize`` on trained models. Results: JSON + markdown table + plots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgezoo import atomic, manifest
from edgezoo.argtypes import at_least
from edgezoo.runtime.timing import time_decode

if TYPE_CHECKING:
    from benchmarks.peers import PeerResult

RESULTS = Path(__file__).parent / "results"
PRECISION_VARIANTS = {
    "fp32": "gqa",
    "int8": "gqa-int8",
    "int8-dynamic": "gqa-int8-dynamic",
    "int4": "gqa-int4",
    "fp32-portable": "fp32",
}


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "execution_providers": onnxruntime.get_available_providers(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def copy_bandwidth_gbs(threads: int, mb: int = 256, repeats: int = 5) -> float:
    """Read + write bytes per second of a large multi-threaded copy: the decode floor's
    denominator (a decode step streams every weight from memory once)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(mb * 2**20 // 4)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * src.numel() * 4 / best / 1e9


def prepare(size: str, work: Path, context: int = 1024) -> Path:
    """A random-init LM of preset ``size`` with fp32 (portable + GQA), int8 and int4 graphs."""
    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model
    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer

    out = work / f"lm-{size}"
    variants = manifest.read(out)["variants"]
    if {"gqa", "gqa-int8", "gqa-int4"} <= set(variants) and _head_whole(out, variants["gqa"]):
        to_onnx(out, greedy_steps=8, optimize=False)  # exported before the sliced LM head
        quantize_model(out, "int8", QuantizeOptions(), measure_all=False)
        quantize_model(out, "int4", QuantizeOptions(head_bits=INT4_HEAD_BITS), measure_all=False)
        return out
    if {"gqa", "gqa-int8", "gqa-int4"} <= set(variants):
        if _head_bits(variants["gqa-int4"]) != INT4_HEAD_BITS:  # built before the head rule
            quantize_model(out, "int4", QuantizeOptions(head_bits=INT4_HEAD_BITS), False)
        dynamic = variants.get("gqa-int8-dynamic", {}).get("quantization", {})
        blocks = variants["gqa-int8"].get("quantization", {}).get("block_choice")
        # built before the second int8 form / per-row scales / per-matrix int8 blocks
        if dynamic.get("activation_scales") != "per row" or blocks != "auto":
            quantize_model(out, "int8", QuantizeOptions(), measure_all=False)
        return out
    import torch

    torch.manual_seed(0)
    cfg = make_config("lm", size)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, context)
    save_model_dir(build_model(cfg).eval(), out)
    tok = train_tokenizer(_tokenizer_text(), cfg.vocab_size, max_chars=2_000_000)
    save_tokenizer(tok, out, cfg.max_position_embeddings)
    to_onnx(out, greedy_steps=8, optimize=False)
    quantize_model(out, "int8", QuantizeOptions(), measure_all=False)
    quantize_model(out, "int4", QuantizeOptions(head_bits=INT4_HEAD_BITS), measure_all=False)
    return out


# Random weights leave the quality gate nothing to judge the int4 LM head by (it would keep
# 8 bits): speed rows use a 4-bit head, as ONNX Runtime GenAI's builder does by default, so
# int4 compares with int4. Trained models get the gate's choice (quantize --head-bits auto).
INT4_HEAD_BITS = 4


def _head_whole(model_dir: Path, gqa: dict) -> bool:
    """Whether the GQA graph has an untied LM head in one piece that the export now writes
    in slices (``export.gqa_graph._lm_head``)."""
    import onnx

    from edgezoo.export.gqa_graph import HEAD_CHUNK_BYTES

    graph = onnx.load(str(model_dir / "onnx" / gqa["file"]), load_external_data=False).graph
    head = next(n for n in graph.node if "logits" in n.output)
    weight = next((i for i in graph.initializer if i.name == head.input[-1]), None)
    nbytes = 4 * int(np.prod(weight.dims)) if weight is not None else 0
    return head.op_type == "MatMul" and nbytes > HEAD_CHUNK_BYTES


def _head_bits(entry: dict) -> int | None:
    return entry.get("quantization", {}).get("lm_head_bits")


def _tokenizer_text():
    from edgezoo.zoo.corpus import stdlib_documents

    for _, text in stdlib_documents():
        yield text


def peak_rss_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_variant(
    model_dir: Path,
    variant: str,
    batch: int,
    prompt: int,
    new_tokens: int,
    threads: int,
    repeats: int,
) -> dict:
    from edgezoo.runtime.api import load_variant

    peak_rss_reset()
    t0 = time.perf_counter()
    lm = load_variant(model_dir, variant, backend="ort-cpu", threads=threads)
    load_s = time.perf_counter() - t0
    vocab = lm.tokenizer.get_vocab_size()
    rng = np.random.default_rng(0)
    ids = [[1, *rng.integers(4, vocab, prompt - 1).tolist()] for _ in range(batch)]
    steps, ttft, _ = time_decode(lm, ids, new_tokens, repeats)
    bytes_ = manifest.read(model_dir)["variants"][variant]["bytes"]
    p50 = statistics.median(steps)
    return {
        "variant": variant,
        "batch": batch,
        "prompt": prompt,
        "new_tokens": new_tokens,
        "threads": threads,
        "load_s": load_s,
        "ttft_ms": statistics.median(ttft) * 1000,
        "pp_tokens_per_s": batch * prompt / statistics.median(ttft),
        "decode_ms_p50": p50 * 1000,
        "decode_ms_p95": float(np.percentile(steps, 95)) * 1000,
        "tokens_per_s": batch / p50,
        "weight_bytes": bytes_,
        "achieved_gbs": bytes_ / p50 / 1e9,
        "peak_rss_mb": peak_rss_mb(),
    }


def run(
    sizes: list[str],
    precisions: list[str],
    batches: list[int],
    prompts: list[int],
    new_tokens: int,
    threads: int,
    repeats: int,
    peers: list[str],
    work: Path,
    peer_prompts: tuple[int, ...] = (32,),
    peer_rounds: int = 1,
) -> dict:
    """Time every size × precision × batch × prompt, then each peer beside edgezoo.

    The peer rows are measured ``peer_rounds`` times, round after round over the whole
    list (not one row's rounds back to back): a noisy minute then lands on every row once,
    and each row reports the median of its rounds with the spread of its per-round ratios."""
    from rich.progress import Progress

    from edgezoo.zoo.presets import count_params, make_config

    results = {
        "machine": machine(),
        "threads": threads,
        "weights": "random-init (speed only; quality: edgezoo quantize); int4: 4-bit LM head, as GenAI's builder",
        "copy_bandwidth_gbs": copy_bandwidth_gbs(threads),
        "runs": [],
        "peers": [],
        "peer_rounds": peer_rounds,
    }
    bw = results["copy_bandwidth_gbs"]
    jobs = [(s, p, b, n) for s in sizes for p in precisions for b in batches for n in prompts]
    with Progress() as progress:
        peer_jobs = [(s, peer, n) for s in sizes for peer in peers for n in peer_prompts]
        task = progress.add_task("bench", total=len(jobs) + len(peer_jobs) * peer_rounds)
        prepared: dict[str, Path] = {}
        for size, precision, batch, prompt in jobs:
            if size not in prepared:
                progress.update(task, description=f"prepare {size}")
                prepared[size] = prepare(size, work)
            model_dir = prepared[size]
            variant = PRECISION_VARIANTS[precision]
            progress.update(task, description=f"{size} {precision} b{batch} p{prompt}")
            row = bench_variant(model_dir, variant, batch, prompt, new_tokens, threads, repeats)
            row.update(
                size=size,
                precision=precision,
                params=count_params(make_config("lm", size)),
                floor_ms=row["weight_bytes"] / bw / 1e6,
            )
            row["ratio_to_floor"] = row["decode_ms_p50"] / row["floor_ms"]
            results["runs"].append(row)
            progress.advance(task)
        rounds: list[list[dict]] = []
        for r in range(peer_rounds):
            own_fresh: dict[tuple[Path, str, int], PeerResult] = {}  # fresh per round
            rounds.append([])
            for size, peer, prompt in peer_jobs:
                progress.update(task, description=f"{size} peer {peer} p{prompt} round {r + 1}")
                rounds[-1].append(
                    _peer_row(
                        peer,
                        prepared[size],
                        size,
                        prompt,
                        new_tokens,
                        threads,
                        repeats,
                        work,
                        own_fresh,
                    )
                )
                progress.advance(task)
        results["peers"] = [median_of_rounds(list(row)) for row in zip(*rounds, strict=True)]
    return results


def _peer_row(
    peer: str,
    model_dir: Path,
    size: str,
    prompt_len: int,
    new_tokens: int,
    threads: int,
    repeats: int,
    work: Path,
    own_fresh: dict[tuple[Path, str, int], PeerResult],
) -> dict:
    """One peer beside edgezoo on the same weights and ``prompt_len``-token prompt: decode
    step and time to first token (the prompt's prefill) of both. ``own_fresh`` caches
    edgezoo run exactly like a peer (a fresh process, timed by the same code) per (model,
    precision, prompt): its peak RSS, and a decode step free of this process's state."""
    from dataclasses import asdict

    from benchmarks.peers import run_peer
    from edgezoo.runtime.api import load_variant

    rng = np.random.default_rng(0)
    precision = "int4" if peer.endswith(":int4") else "int8" if peer.endswith(":int8") else "fp32"
    ours = PRECISION_VARIANTS[precision]
    lm = load_variant(model_dir, ours, threads=threads)
    prompt = [1, *rng.integers(4, lm.tokenizer.get_vocab_size(), prompt_len - 1).tolist()]
    # edgezoo runs before and after the peer, its steps pooled: a burst of noise on this
    # shared machine then weighs on one side's median no more than on the other's.
    steps, ttft, tokens = time_decode(lm, [prompt], new_tokens, repeats)
    result = asdict(
        run_peer(
            peer.split(":")[0],
            model_dir,
            prompt,
            new_tokens,
            threads,
            precision,
            repeats,
            work / "peers" / size,
        )
    )
    after, ttft_after, _ = time_decode(lm, [prompt], new_tokens, repeats)
    steps += after
    ttft += ttft_after
    key = (model_dir, precision, prompt_len)
    if key not in own_fresh:
        own_fresh[key] = run_peer(
            "edgezoo", model_dir, prompt, new_tokens, threads, precision, repeats
        )
    fresh = own_fresh[key]
    result.update(
        size=size,
        prompt=prompt_len,
        edgezoo_variant=ours,
        edgezoo_decode_ms_p50=statistics.median(steps) * 1000,
        edgezoo_ttft_ms=statistics.median(ttft) * 1000,
        edgezoo_peak_rss_mb=fresh.peak_rss_mb,
        edgezoo_fresh_decode_ms_p50=fresh.decode_ms_per_token_p50,
        greedy_agreement=sum(a == b for a, b in zip(tokens, result["tokens"], strict=False)),
    )
    if result.get("decode_ms_per_token_p50"):
        result["speedup_vs_peer"] = (
            result["decode_ms_per_token_p50"] / result["edgezoo_decode_ms_p50"]
        )
    if result.get("decode_ms_per_token_p50") and fresh.decode_ms_per_token_p50:
        result["speedup_vs_peer_fresh"] = (
            result["decode_ms_per_token_p50"] / fresh.decode_ms_per_token_p50
        )
    if result.get("ttft_ms"):
        result["ttft_speedup_vs_peer"] = result["ttft_ms"] / result["edgezoo_ttft_ms"]
    result.pop("tokens")
    return result


RATIOS = ("speedup_vs_peer", "speedup_vs_peer_fresh", "ttft_speedup_vs_peer")


def median_of_rounds(rows: list[dict]) -> dict:
    """One peer row from its rounds: each time the median of the rounds that have it, each
    ratio the median of the per-round ratios (each round's pair was timed together, so a
    paired ratio is not thrown off by a slow minute the way a ratio of medians is), its
    per-round values kept beside it (``<ratio>_rounds``), and the fewest equal tokens."""
    if len(rows) == 1:
        return rows[0]
    row = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float) or value is None:
            values = [r[key] for r in rows if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
    for key in RATIOS:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            row[key + "_rounds"] = values
    row["greedy_agreement"] = min(r["greedy_agreement"] for r in rows)
    row["available"] = all(r["available"] for r in rows)
    row["rounds"] = len(rows)
    return row


def _ratio(p: dict, key: str) -> str:
    """A ratio, with the range of its rounds when it had more than one."""
    text = _num(p.get(key), ".2f", "×")
    spread = p.get(key + "_rounds")
    if spread and len(spread) > 1:
        text += f" ({min(spread):.2f}–{max(spread):.2f})"
    return text


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; onnxruntime {m['onnxruntime']}, torch {m['torch']}; "
        f"{results['threads']} threads; copy bandwidth {results['copy_bandwidth_gbs']:.1f} GB/s; {m['date']}. "
        f"Weights: {results['weights']}.",
        "",
        "| size | params | precision | batch | prompt | TTFT ms | pp tok/s | tg ms/token p50 | p95 | tok/s | MB | floor ms | × floor | GB/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['precision']} | {r['batch']} | {r['prompt']} | {r['ttft_ms']:.1f} | "
            f"{r['pp_tokens_per_s']:.0f} | {r['decode_ms_p50']:.2f} | {r['decode_ms_p95']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['weight_bytes'] / 1e6:.1f} | {r['floor_ms']:.2f} | {r['ratio_to_floor']:.1f} | {r['achieved_gbs']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    if results["peers"]:
        lines += [
            "",
            "Peers, batch 1, same weights, same run (peer ÷ edgezoo > 1 means edgezoo is faster). "
            "edgezoo ms/token: in this process, before and after the peer; edgezoo fresh: run exactly like the peer (a fresh process, the same timing code). "
            "TTFT: the prompt's prefill and first token. "
            "Peak RSS: the high-water mark of a fresh process that loads the model and decodes, for the peer and for edgezoo alike"
            + (
                f". Medians of {results['peer_rounds']} interleaved rounds (every row once per round); "
                "in brackets the lowest and highest of a ratio's rounds:"
                if results.get("peer_rounds", 1) > 1
                else ":"
            ),
            "",
            "| size | peer | precision | prompt | peer ms/token | edgezoo ms/token | peer ÷ edgezoo | edgezoo fresh ms/token | peer ÷ edgezoo fresh | peer TTFT ms | edgezoo TTFT ms | TTFT peer ÷ edgezoo | greedy tokens equal | peer peak RSS MB | edgezoo peak RSS MB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in results["peers"]:
            head = f"| {p['size']} | {p['peer']} | {p['precision']} | {p.get('prompt', 32)} |"
            ours = f"{p['edgezoo_decode_ms_p50']:.2f}"
            fresh = _num(p.get("edgezoo_fresh_decode_ms_p50"), ".2f")
            our_ttft = _num(p.get("edgezoo_ttft_ms"), ".1f")
            if p["available"]:
                lines.append(
                    f"{head} {p['decode_ms_per_token_p50']:.2f} | {ours} | "
                    f"{_ratio(p, 'speedup_vs_peer')} | {fresh} | "
                    f"{_ratio(p, 'speedup_vs_peer_fresh')} | {_num(p.get('ttft_ms'), '.1f')} | "
                    f"{our_ttft} | {_ratio(p, 'ttft_speedup_vs_peer')} | {p['greedy_agreement']} | "
                    f"{_mb(p.get('peak_rss_mb'))} | {_mb(p.get('edgezoo_peak_rss_mb'))} | {p['note'][:60]} |"
                )
            else:
                lines.append(
                    f"{head} – | {ours} | – | {fresh} | – | – | {our_ttft} | – | – | – | "
                    f"{_mb(p.get('edgezoo_peak_rss_mb'))} | skipped: {p['note'][:80]} |"
                )
    return "\n".join(lines) + "\n"


def _mb(value: float | None) -> str:
    return _num(value, ".0f")


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def plot(results: dict, path: Path) -> None:
    """Decode latency vs parameters (log-log) per precision, and tokens/s vs batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [
        r
        for r in results["runs"]
        if r["batch"] == 1 and r["prompt"] == min(x["prompt"] for x in results["runs"])
    ]
    for precision in sorted({r["precision"] for r in runs}):
        rows = sorted((r for r in runs if r["precision"] == precision), key=lambda r: r["params"])
        a.plot(
            [r["params"] for r in rows], [r["decode_ms_p50"] for r in rows], "o-", label=precision
        )
    floor = sorted((r for r in runs if r["precision"] == "fp32"), key=lambda r: r["params"])
    if floor:
        a.plot(
            [r["params"] for r in floor],
            [r["floor_ms"] for r in floor],
            "k--",
            label="fp32 bandwidth floor",
        )
    a.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="ms / token (batch 1, p50)",
        title="decode latency, ort-cpu",
    )
    a.legend()
    for size, precision in sorted({(r["size"], r["precision"]) for r in results["runs"]}):
        rows = sorted(
            (
                r
                for r in results["runs"]
                if r["size"] == size
                and r["precision"] == precision
                and r["prompt"] == min(x["prompt"] for x in results["runs"])
            ),
            key=lambda r: r["batch"],
        )
        if len(rows) > 1:
            b.plot(
                [r["batch"] for r in rows],
                [r["tokens_per_s"] for r in rows],
                "o-",
                label=f"{size} {precision}",
            )
    b.set(
        xscale="log", yscale="log", xlabel="batch", ylabel="tokens / s", title="throughput vs batch"
    )
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare(new: dict, old: dict) -> str:
    key = lambda r: (r["size"], r["precision"], r["batch"], r["prompt"])  # noqa: E731
    before = {key(r): r for r in old["runs"]}
    lines = [
        "| size | precision | batch | prompt | ms/token old | new | new ÷ old |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in new["runs"]:
        if key(r) in before:
            o = before[key(r)]["decode_ms_p50"]
            lines.append(
                f"| {r['size']} | {r['precision']} | {r['batch']} | {r['prompt']} | {o:.2f} | {r['decode_ms_p50']:.2f} | {r['decode_ms_p50'] / o:.2f} |"
            )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", default="nano,micro,mini,small,medium", help="LM presets (comma-separated)"
    )
    p.add_argument(
        "--precisions", default="fp32,int8,int4", help=f"of {', '.join(PRECISION_VARIANTS)}"
    )
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--prompts", default="32,128,512", help="prompt lengths in tokens")
    p.add_argument(
        "--peer-prompts",
        default="32",
        help="prompt lengths of the peer rows (their TTFT is the prompt's prefill), e.g. 32,512",
    )
    p.add_argument(
        "--peer-rounds",
        type=at_least(1),
        default=1,
        help="measure every peer row this many times, round after round over all rows, and "
        "report medians with the spread of each ratio (on a noisy host: 3 or more)",
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="fixed for every runtime and recorded")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--peers",
        default="",
        help="peer runtimes to run beside edgezoo, each optionally :int8 or :int4 (the `peers` "
        "extra): pytorch-eager, optimum-ort, ort-genai, ctranslate2, llama-cpp; "
        "e.g. ort-genai,ort-genai:int4,llama-cpp:int4",
    )
    p.add_argument(
        "--work",
        default=str(
            Path(os.environ.get("EDGEZOO_CACHE", Path.home() / ".cache" / "edgezoo")) / "bench"
        ),
        help="where random-init model dirs are built and cached",
    )
    p.add_argument("--out", default=str(RESULTS / "bench"), help="prefix for .json, .md and .png")
    p.add_argument("--compare", help="an earlier results .json: print new ÷ old ratios")


def main(args: argparse.Namespace) -> int:
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    results = run(
        split(args.sizes),
        split(args.precisions),
        [int(x) for x in split(args.batches)],
        [int(x) for x in split(args.prompts)],
        args.new_tokens,
        args.threads,
        args.repeats,
        split(args.peers),
        Path(args.work),
        tuple(int(x) for x in split(args.peer_prompts)),
        args.peer_rounds,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), results)
    table = markdown(results)
    atomic.write_text(out.with_suffix(".md"), table)
    plot(results, out.with_suffix(".png"))
    print(table)
    if args.compare:
        print(compare(results, json.loads(Path(args.compare).read_text())))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
