"""``python -m benchmarks.gpu_compare``: the torch-free half of ``benchmarks/gpu_check.sh``.

Subcommands, each writing one JSON file the summary gathers (see ``benchmarks/gpu_check.md``):

* ``env``: versions and devices (torch, ONNX Runtime providers, TensorRT) — every import
  optional, so it reports what is missing instead of failing;
* ``tokens``: load an exported model dir on one backend / variant, greedy-decode a prompt
  (the tokens compared against ``ort-cpu`` fp32) and time per-token decode;
* ``mfu``: tokens/s and model-FLOPs utilisation of a training run, from its
  ``training.jsonl`` and ``config.json`` (no torch: the FLOPs come from the config);
* ``summary``: the step table (``steps.tsv``) and every result JSON into ``gpu-check.json``
  and a short ``gpu-check.md``, greedy tokens compared against the reference.

Only ``tokens`` imports edgezoo (its runtime, never torch); nothing here imports torch
unless ``env`` finds it installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peak of an H200 SXM by NVIDIA's datasheet (the H100's): the MFU
# denominator unless --peak-tflops says otherwise. Measured matmuls reach ~790 TFLOP/s.
H200_BF16_DENSE_TFLOPS = 989.4
REFERENCE = ("ort-cpu", "fp32", False)


# ---------------------------------------------------------------- pure logic (unit-tested)


def compare_tokens(reference: list[int], got: list[int]) -> dict[str, Any]:
    """How far two greedy token lists agree: exact match, first differing index, prefix."""
    n = min(len(reference), len(got))
    first = next((i for i in range(n) if reference[i] != got[i]), None)
    if first is None and len(reference) != len(got):
        first = n
    prefix = n if first is None else first
    return {
        "match": first is None,
        "first_mismatch": first,
        "common_prefix": prefix,
        "reference_len": len(reference),
        "len": len(got),
        "prefix_fraction": prefix / max(len(reference), 1),
    }


def flops_per_token(config: dict[str, Any], context: int) -> tuple[int, int]:
    """(6N, 12·L·d·T) training FLOPs per token from an HF Llama ``config.json``.

    N counts every weight a token is multiplied by: all but the embedding lookup, with the
    LM head counted once whether tied or not (the formula of benchmarks/train_throughput)."""
    d = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or d // heads
    ff = config["intermediate_size"]
    vocab = config["vocab_size"]
    per_layer = 2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * ff + 2 * d
    n = layers * per_layer + d + vocab * d
    return 6 * n, 12 * layers * d * context


def training_speed(rows: list[dict[str, Any]], skip: int = 1) -> dict[str, Any]:
    """Steady tokens/s of a run: the median over log lines after the first ``skip``
    (the first interval holds torch.compile's warm-up), and the whole-run figure."""
    steps = [r for r in rows if "tokens_per_s" in r and "event" not in r]
    steady = [r["tokens_per_s"] for r in steps[skip:]] or [r["tokens_per_s"] for r in steps]
    final = next((r for r in reversed(rows) if r.get("event") == "final"), {})
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "tokens_per_s": statistics.median(steady) if steady else None,
        "tokens_per_s_whole_run": final.get("train_tokens_per_s"),
        "final_loss": steps[-1]["loss"] if steps else None,
        "eval": {k: v for k, v in final.items() if k not in ("step", "event")},
    }


def mfu_row(
    config: dict[str, Any], rows: list[dict[str, Any]], context: int, peak_tflops: float
) -> dict[str, Any]:
    speed = training_speed(rows)
    dense, attn = flops_per_token(config, context)
    tok_s = speed["tokens_per_s"]
    peak = peak_tflops * 1e12
    return {
        **speed,
        "context": context,
        "flops_per_token": dense + attn,
        "flops_per_token_6n": dense,
        "peak_tflops": peak_tflops,
        "mfu": tok_s * (dense + attn) / peak if tok_s else None,
        "mfu_6n": tok_s * dense / peak if tok_s else None,
    }


def read_steps(path: Path) -> list[dict[str, Any]]:
    """steps.tsv (name, status, rc, seconds, budget_s, note) as written by gpu_check.sh."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        name, status, rc, seconds, budget = parts[:5]
        out.append(
            {
                "name": name,
                "status": status,
                "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                "seconds": float(seconds) if seconds else None,
                "budget_s": int(budget) if budget.isdigit() else None,
                "note": parts[5] if len(parts) > 5 else "",
            }
        )
    return out


def case_key(row: dict[str, Any]) -> tuple[str, str, bool]:
    return (row.get("backend", ""), row.get("asked_variant", ""), bool(row.get("fp16")))


def summarize(steps: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    """One object: steps, environment, training, and greedy agreement per backend/variant."""
    tokens = [r for r in results.get("tokens", []) if "token_ids" in r]
    # Each model against its own ort-cpu fp32 run: a model without one is compared with none.
    refs = {r.get("model"): r for r in tokens if case_key(r) == REFERENCE}
    for row in tokens:
        ref = refs.get(row.get("model"))
        if ref is not None and row is not ref:
            row["vs_ort_cpu_fp32"] = compare_tokens(ref["token_ids"], row["token_ids"])
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return {
        "ran_on_gpu": bool(results.get("env", {}).get("cuda_available")),
        "steps": steps,
        "step_counts": counts,
        **results,
    }


def markdown(summary: dict[str, Any]) -> str:
    env = summary.get("env", {})
    lines = [
        "# GPU check",
        "",
        f"GPU: {env.get('gpu_name', 'none seen')}; torch {env.get('torch', '-')} "
        f"(CUDA {env.get('torch_cuda', '-')}); onnxruntime {env.get('onnxruntime', '-')} "
        f"({', '.join(env.get('ort_providers', [])) or '-'}); TensorRT {env.get('tensorrt', '-')}",
        "",
        "| step | status | seconds | budget s | note |",
        "|---|---|---|---|---|",
    ]
    for s in summary["steps"]:
        secs = f"{s['seconds']:.0f}" if s.get("seconds") is not None else ""
        lines.append(
            f"| {s['name']} | {s['status']} | {secs} | {s.get('budget_s') or ''} | {s['note']} |"
        )
    train = summary.get("train")
    if train:
        mfu = f"{train['mfu']:.1%}" if train.get("mfu") is not None else "-"
        tok = f"{train['tokens_per_s']:,.0f}" if train.get("tokens_per_s") else "-"
        lines += ["", f"Training: {tok} tokens/s, MFU {mfu} (peak {train['peak_tflops']} TFLOP/s)"]
    rows = summary.get("tokens", [])
    if rows:
        lines += [
            "",
            "| model | backend | variant | fp16 | greedy vs ort-cpu fp32 | decode ms p50 | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cmp = r.get("vs_ort_cpu_fp32")
            agree = (
                "reference"
                if case_key(r) == REFERENCE
                else (
                    "-"
                    if cmp is None
                    else "match"
                    if cmp["match"]
                    else f"differs at {cmp['first_mismatch']}"
                )
            )
            ms = f"{r['decode_ms_p50']:.2f}" if r.get("decode_ms_p50") is not None else "-"
            err = (r.get("error") or "").replace("|", "/")[:120]
            lines.append(
                f"| {r.get('model', '')} | {r.get('backend')} | {r.get('variant', r.get('asked_variant'))} "
                f"| {'yes' if r.get('fp16') else ''} | {agree} | {ms} | {err} |"
            )
    return "\n".join(lines) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Atomic enough for a one-shot script: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def gather(results_dir: Path) -> dict[str, Any]:
    """Result files by kind: env.json, train.json, tokens-*.json, other *.json by stem."""
    out: dict[str, Any] = {"tokens": []}
    if not results_dir.is_dir():
        return out
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            data = {"error": f"unreadable {path.name}: {e}"}
        if path.stem.startswith("tokens-"):
            out["tokens"].append(data)
        else:
            out[path.stem] = data
    return out


# ---------------------------------------------------------------- subcommands


def cmd_env(args: argparse.Namespace) -> int:
    env: dict[str, Any] = {"python": sys.version.split()[0], "cuda_available": False}
    try:
        import torch

        env.update(
            torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
        )
        if torch.cuda.is_available():
            env.update(
                gpu_name=torch.cuda.get_device_name(0),
                bf16=torch.cuda.is_bf16_supported(),
                capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                nccl=".".join(map(str, torch.cuda.nccl.version())),
            )
    except Exception as e:  # report, never fail: this is the inventory step
        env["torch_error"] = repr(e)
    try:
        import onnxruntime as ort

        env.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    except Exception as e:
        env["onnxruntime_error"] = repr(e)
    for name in ("tensorrt", "polygraphy", "onnx", "tokenizers", "numpy"):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:
            env[name] = None
            env[f"{name}_error"] = repr(e)[:200]
    write_json(Path(args.out), env)
    print(json.dumps(env, indent=2))
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    row: dict[str, Any] = {
        "model": Path(args.model_dir).name,
        "backend": args.backend,
        "asked_variant": args.variant,
        "fp16": args.fp16,
        "max_new_tokens": args.max_new_tokens,
    }
    try:
        from edgezoo.runtime.api import load
        from edgezoo.runtime.timing import time_decode

        t0 = time.perf_counter()
        lm = load(args.model_dir, backend=args.backend, variant=args.variant, fp16=args.fp16)
        row.update(load_s=time.perf_counter() - t0, variant=lm.variant, reason=lm.reason)
        gen = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, ignore_eos=True)
        row["token_ids"] = list(gen.token_ids)
        row["text"] = gen.text if hasattr(gen, "text") else None
        if args.repeats > 0:
            prompt_ids = lm.tokenizer.encode(args.prompt).ids
            timing = time_decode(lm, [prompt_ids], args.bench_tokens, args.repeats)
            row.update(
                decode_ms_p50=statistics.median(timing.step_s) * 1000,
                decode_ms_p95=sorted(timing.step_s)[int(0.95 * (len(timing.step_s) - 1))] * 1000,
                ttft_ms=statistics.median(timing.ttft_s) * 1000,
                bench_tokens=args.bench_tokens,
                repeats=args.repeats,
            )
    except Exception as e:  # the error is the finding: record it, exit non-zero
        row["error"] = f"{type(e).__name__}: {e}"
        write_json(Path(args.out), row)
        print(row["error"], file=sys.stderr)
        return 1
    write_json(Path(args.out), row)
    print(json.dumps({k: v for k, v in row.items() if k != "token_ids"}, indent=2))
    return 0


def cmd_mfu(args: argparse.Namespace) -> int:
    run = Path(args.model_dir)
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "training.jsonl").read_text().splitlines() if x.strip()]
    row = mfu_row(config, rows, args.context, args.peak_tflops)
    row.update(model=run.name, batch_size=args.batch_size)
    write_json(Path(args.out), row)
    print(json.dumps(row, indent=2))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    summary = summarize(read_steps(Path(args.steps)), gather(Path(args.results)))
    summary["elapsed_s"] = args.elapsed
    write_json(Path(args.out), summary)
    Path(args.out).with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_compare", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("env", help="versions, devices and ORT providers as JSON")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_env)

    s = sub.add_parser("tokens", help="greedy tokens + decode timing on one backend/variant")
    s.add_argument("model_dir")
    s.add_argument("--backend", required=True)
    s.add_argument("--variant", default="fp32")
    s.add_argument("--fp16", action="store_true", help="TensorRT builder fp16 (ort-trt, tensorrt)")
    s.add_argument("--prompt", default="def main(args):\n    ")
    s.add_argument("--max-new-tokens", type=int, default=32)
    s.add_argument("--bench-tokens", type=int, default=64, help="timed decode tokens")
    s.add_argument("--repeats", type=int, default=3, help="timed runs (0: no timing)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_tokens)

    s = sub.add_parser("mfu", help="tokens/s and MFU of a training run")
    s.add_argument("model_dir")
    s.add_argument("--context", type=int, required=True)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_mfu)

    s = sub.add_parser("summary", help="steps.tsv + result JSONs -> gpu-check.json/.md")
    s.add_argument("--steps", required=True)
    s.add_argument("--results", required=True)
    s.add_argument("--elapsed", type=float, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
