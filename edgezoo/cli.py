"""The ``edgezoo`` command: one subcommand per stage, each a thin layer over the Python API.

Heavy imports (torch, onnx) happen inside the subcommand that needs them, so
``edgezoo --help`` is instant and runtime-only installs work without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from edgezoo.errors import EdgeZooError


def run_guarded(fn: Callable[[], int], *args) -> int:
    """Run ``fn``; a user error prints one clear line (exit 2) instead of a stack trace."""
    try:
        return fn(*args)
    except EdgeZooError as e:
        print(f"edgezoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_models(args: argparse.Namespace) -> int:
    from zoo.presets import summaries

    rows = summaries()
    if args.json:
        print(
            json.dumps(
                [
                    {**vars(r), **{f"{b}bit_MB": r.weight_bytes(b) / 1e6 for b in (32, 16, 8, 4)}}
                    for r in rows
                ],
                indent=2,
            )
        )
        return 0
    header = f"{'family':<6} {'size':<7} {'params':>9} {'layers':>6} {'width':>5} {'heads':>5} {'kv':>3} {'ctx':>5} {'vocab':>6} {'fp32':>9} {'fp16':>9} {'int8':>9} {'int4':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        mem = " ".join(f"{_mb(r.weight_bytes(b)):>9}" for b in (32, 16, 8, 4))
        print(
            f"{r.family:<6} {r.name:<7} {_count(r.params):>9} {r.layers:>6} {r.width:>5} {r.heads:>5} {r.kv_heads:>3} {r.context:>5} {r.vocab:>6} {mem}"
        )
    print(
        "\nlm = decoder LM (Llama: RMSNorm, RoPE, SwiGLU, grouped-query attention); cls = encoder classifier (BERT)."
    )
    print("Memory is weights only; params count the default vocabulary and tied embeddings once.")
    return 0


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        from zoo.launch import launch

        return launch(args.nproc, sys.argv[1:], args.max_restarts)
    from zoo.train import train
    from zoo.train_config import config_from_args

    result = train(config_from_args(args))
    print(json.dumps({"out": str(result.out), "steps": result.steps, **result.metrics}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.evaluate import evaluate_dir

    print(json.dumps(evaluate_dir(args.model_dir, args.data, args.split), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    kwargs = {
        "opset": args.opset,
        "tolerance": args.tolerance,
        "greedy_steps": args.greedy_steps,
        "fast": not args.no_fast,
        "optimize": not args.no_optimize,
    }
    if args.from_hf:
        from export.hf_import import import_hf

        result = import_hf(args.from_hf, args.model_dir, **kwargs)
    else:
        from export.onnx_export import to_onnx

        result = to_onnx(args.model_dir, **kwargs)
    if args.ort_format:
        from export.ort_format import to_ort_format

        for name in list(result.variants):
            result.variants[f"{name}-ort"] = to_ort_format(args.model_dir, name)
    print(
        f"{'variant':<10} {'graph':<14} {'file':<20} {'MB':>8} {'max |Δ| vs torch':>17} {'greedy':>7}"
    )
    for name, v in result.variants.items():
        greedy = (
            f"{v.get('greedy_steps', 0)}/{v.get('greedy_steps', 0)}"
            if v.get("greedy_steps")
            else "-"
        )
        print(
            f"{name:<10} {v['graph']:<14} {v['file']:<20} {v['bytes'] / 1e6:>8.2f} {v['max_abs_diff']:>17.2e} {greedy:>7}"
        )
    for note in result.notes:
        print(f"note: {note}")
    print(f"manifest: {Path(args.model_dir) / 'onnx' / 'manifest.json'}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from quantize.pipeline import QuantizeOptions, quantize_model
    from quantize.report import variants_table

    opts = QuantizeOptions(
        per_channel=not args.per_tensor,
        block_size=args.block_size,
        symmetric=not args.asymmetric,
        accuracy_level=args.accuracy_level,
        head_bits=None if args.head_bits == 0 else args.head_bits,
        embeddings=not args.fp32_embeddings,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        for_tensorrt=args.for_ == "tensorrt",
        ppl_budget_pct=args.max_ppl_rise,
        acc_budget_points=args.max_acc_drop,
        data=args.data,
    )
    for target in args.to:
        variants = quantize_model(args.model_dir, target, opts)
    print(variants_table(variants))
    return 0


def _sampling_args(args: argparse.Namespace) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "stop": tuple(args.stop or ()),
        "seed": args.seed,
    }


def cmd_generate(args: argparse.Namespace) -> int:
    import runtime

    lm = runtime.load(
        args.model_dir, backend=args.backend, variant=args.variant, threads=args.threads
    )
    print(f"[{lm.backend} · {lm.variant}] {lm.reason}", file=sys.stderr)
    if args.no_stream:
        print(args.prompt + lm.generate(args.prompt, **_sampling_args(args)).text)
        return 0
    print(args.prompt, end="", flush=True)
    for delta in lm.stream(args.prompt, **_sampling_args(args)):
        print(delta, end="", flush=True)
    g = lm.last
    print(
        f"\n[{len(g.token_ids)} tokens, {g.finish_reason}; first token {g.time_to_first_token_s * 1000:.1f} ms, "
        f"{len(g.token_ids) / max(g.decode_s, 1e-9):.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    import runtime

    clf = runtime.load(
        args.model_dir, backend=args.backend, variant=args.variant, threads=args.threads
    )
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    results = clf.classify(texts)
    for text, r in zip(texts, results, strict=True):
        print(json.dumps({"label": r["label"], "score": round(r["score"], 4), "text": text[:60]}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import main as bench_main

    return bench_main(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from benchmarks.sweep import main as sweep_main

    return sweep_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgezoo.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, size=args.size, steps=args.steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgezoo",
        description="Train small transformers, export them to ONNX, shrink and run them at the edge.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the size presets with parameters and weight memory")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_models)

    from zoo.train_config import add_arguments

    s = sub.add_parser("train", help="train a decoder LM or an encoder classifier into a model dir")
    add_arguments(s)
    s.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine (>1: runs torchrun for you; DDP, or FSDP with --fsdp)",
    )
    s.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="with --nproc: restart failed workers this often; they resume from the last checkpoint",
    )
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser(
        "eval", help="evaluate a model dir (LM: loss/perplexity; cls: accuracy, macro-F1)"
    )
    s.add_argument("model_dir")
    s.add_argument("--data", help="corpus (default: the built-in one for the family)")
    s.add_argument("--split", choices=("val", "train", "all"), default="val")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser(
        "export", help="export a model dir to validated ONNX (portable, ORT-optimized, GQA)"
    )
    s.add_argument("model_dir", help="zoo model dir (with --from-hf: the model dir to create)")
    s.add_argument(
        "--from-hf", metavar="DIR", help="import a local Hugging Face checkpoint folder first"
    )
    s.add_argument(
        "--opset", type=int, default=18, help="ONNX opset of the portable graph (default 18)"
    )
    s.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |logit Δ| vs PyTorch to accept"
    )
    s.add_argument(
        "--greedy-steps", type=int, default=64, help="greedy tokens that must match PyTorch exactly"
    )
    s.add_argument(
        "--no-fast", action="store_true", help="skip the GroupQueryAttention decoder graph"
    )
    s.add_argument(
        "--no-optimize", action="store_true", help="skip ONNX Runtime's transformer optimizer"
    )
    s.add_argument(
        "--ort-format",
        action="store_true",
        help="also write .ort files for minimal/mobile ORT builds",
    )
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser(
        "quantize", help="make fp16 / int8 / int4 variants, measured and gated against fp32"
    )
    s.add_argument("model_dir")
    s.add_argument(
        "--to",
        action="append",
        required=True,
        choices=("int8", "int8-static", "fp16", "int4"),
        help="target (repeatable): int8 = dynamic int8 + weight-only int8; int4 = MatMulNBits; "
        "int8-static = calibrated QDQ; fp16 = half precision with fp32 I/O",
    )
    s.add_argument(
        "--for",
        dest="for_",
        choices=("ort", "tensorrt"),
        default="ort",
        help="int8-static for TensorRT: symmetric QDQ activations and weights",
    )
    s.add_argument(
        "--block-size",
        type=int,
        default=32,
        choices=(16, 32, 64, 128),
        help="int4/weight-only block size",
    )
    s.add_argument(
        "--asymmetric",
        action="store_true",
        help="asymmetric weight-only quantization (zero points)",
    )
    s.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits compute type: 4 = int8 activations (fastest on CPU), 0 = fp32",
    )
    s.add_argument(
        "--head-bits",
        type=int,
        default=8,
        choices=(0, 4, 8),
        help="LM head bits in int4 variants (0 = same as the rest)",
    )
    s.add_argument(
        "--fp32-embeddings", action="store_true", help="leave the embedding table in fp32"
    )
    s.add_argument(
        "--per-tensor", action="store_true", help="per-tensor instead of per-channel int8 weights"
    )
    s.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax")
    s.add_argument("--calibration-samples", type=int, default=32)
    s.add_argument(
        "--max-ppl-rise", type=float, default=2.0, help="quality budget for LMs, %% perplexity"
    )
    s.add_argument(
        "--max-acc-drop",
        type=float,
        default=1.0,
        help="quality budget for classifiers, accuracy points",
    )
    s.add_argument(
        "--data", help="evaluation/calibration data (default: the data the model was trained on)"
    )
    s.set_defaults(fn=cmd_quantize)

    from benchmarks.bench import add_arguments as add_bench_arguments

    s = sub.add_parser(
        "bench",
        help="latency per size × precision × batch × prompt length (+ peers); JSON, table, plots",
    )
    add_bench_arguments(s)
    s.set_defaults(fn=cmd_bench)

    from benchmarks.sweep import add_arguments as add_sweep_arguments

    s = sub.add_parser(
        "sweep", help="train presets with equal compute, fit L(N) = a·N^-α + c, plot loss vs size"
    )
    add_sweep_arguments(s)
    s.set_defaults(fn=cmd_sweep)

    from quantize.prune import add_prune_parser
    from runtime.api import add_runtime_arguments
    from runtime.server import add_serve_parser

    add_prune_parser(sub)
    add_serve_parser(sub)

    s = sub.add_parser("generate", help="generate text from an exported LM (streams to stdout)")
    s.add_argument("model_dir")
    s.add_argument("prompt")
    add_runtime_arguments(s)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    s.add_argument("--seed", type=int)
    s.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser(
        "classify", help="classify texts with an exported classifier (args or stdin lines)"
    )
    s.add_argument("model_dir")
    s.add_argument("text", nargs="*", help="texts; read lines from stdin when none")
    add_runtime_arguments(s)
    s.set_defaults(fn=cmd_classify)

    s = sub.add_parser(
        "demo",
        help="the main job: train a small LM on the built-in corpus, export, quantize, generate, benchmark",
    )
    s.add_argument("--out", default="runs/demo", help="model dir to write")
    s.add_argument("--size", default="nano", help="LM size preset")
    s.add_argument(
        "--steps",
        type=int,
        default=600,
        help="training steps (600 ≈ 4 min for nano on 2 CPU cores)",
    )
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
