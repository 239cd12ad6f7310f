"""``edgezoo export``: a model dir (or a local Hugging Face checkpoint) to validated ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
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
    s.set_defaults(fn=cmd_export, extras=("export",))


def cmd_export(args: argparse.Namespace) -> int:
    kwargs = {
        "opset": args.opset,
        "tolerance": args.tolerance,
        "greedy_steps": args.greedy_steps,
        "fast": not args.no_fast,
        "optimize": not args.no_optimize,
    }
    if args.from_hf:
        from edgezoo.export.hf_import import import_hf

        result = import_hf(args.from_hf, args.model_dir, **kwargs)
    else:
        from edgezoo.export.onnx_export import to_onnx

        result = to_onnx(args.model_dir, **kwargs)
    if args.ort_format:
        from edgezoo.export.ort_format import to_ort_format

        for name in list(result.variants):
            result.variants[f"{name}-ort"] = to_ort_format(args.model_dir, name)
    print(
        f"{'variant':<10} {'graph':<14} {'file':<20} {'MB':>8} {'max |Δ| vs torch':>17} {'greedy':>7}"
    )
    for name, v in result.variants.items():
        steps = v.get("greedy_steps", 0)
        greedy = f"{steps}/{steps}" if steps else "-"
        print(
            f"{name:<10} {v['graph']:<14} {v['file']:<20} {v['bytes'] / 1e6:>8.2f} {v['max_abs_diff']:>17.2e} {greedy:>7}"
        )
    for note in result.notes:
        print(f"note: {note}")
    print(f"manifest: {Path(args.model_dir) / 'onnx' / 'manifest.json'}")
    return 0
