"""``edgezoo quantize | prune``: smaller variants of an exported model, each measured.

``quantize`` is ONNX in, ONNX out (the ``quantize`` extra, no torch); ``prune`` edits the
PyTorch weights of a model dir (the ``train`` extra).
"""

from __future__ import annotations

import argparse
from typing import Any

from edgezoo import argtypes
from edgezoo.quantize.prune.cli import add_prune_parser
from edgezoo.quantize.speed import SPEED_MARGIN, SPEED_ROUNDS

TARGETS = ("int8", "int8-static", "fp16", "int4")  # the pipeline's, without importing it
AUTO_BLOCK, BLOCK_SIZES = "auto", (16, 32, 64, 128, 256)  # graphs', without importing onnx


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "quantize", help="make fp16 / int8 / int4 variants, measured and gated against fp32"
    )
    s.add_argument("model_dir", help="exported model dir (after `edgezoo export`)")
    s.add_argument(
        "--to",
        action="extend",
        required=True,
        type=argtypes.choices_list(TARGETS),
        metavar="TARGET[,TARGET...]",
        help="targets, comma-separated or repeated (--to int8,int4 = --to int8 --to int4): "
        "int8 = dynamic int8 + weight-only int8; int4 = MatMulNBits; "
        "int8-static = calibrated QDQ; fp16 = half precision with fp32 I/O "
        "(encoder-decoder models: int8 / int4 weight-only MatMulNBits and fp16, all three graphs)",
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
        type=_block_size,
        default=AUTO_BLOCK,
        help="weight-only block size: 16, 32, 64, 128, 256 or auto (default: int4 and an "
        "encoder-decoder's int8 in blocks of 32; an LM's int8 per matrix, the widest of these "
        "dividing its input dimension)",
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
        default="auto",
        choices=("auto", "0", "4", "8"),
        help="LM head bits in int4 variants: auto (default) builds both and keeps the 4-bit "
        "head when held-out perplexity stays within --max-ppl-rise of the source, else 8; "
        "4 or 8 to fix it; 0 = same as the rest",
    )
    s.add_argument(
        "--fp32-embeddings", action="store_true", help="leave the embedding table in fp32"
    )
    s.add_argument(
        "--per-tensor", action="store_true", help="per-tensor instead of per-channel int8 weights"
    )
    s.add_argument(
        "--calibration",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="int8-static: how activation ranges are set from the calibration data",
    )
    s.add_argument(
        "--calibration-samples",
        type=argtypes.at_least(1),
        default=32,
        help="int8-static: validation windows to calibrate on",
    )
    _add_gate_arguments(s)
    s.add_argument(
        "--data", help="evaluation/calibration data (default: the data the model was trained on)"
    )
    s.set_defaults(fn=cmd_quantize, extras=("quantize",))
    add_prune_parser(subparsers)


def _add_gate_arguments(s: argparse.ArgumentParser) -> None:
    """What the quality gate asks of a variant: speed beyond noise, quality within budget."""
    s.add_argument(
        "--speed-rounds",
        type=argtypes.at_least(1),
        default=SPEED_ROUNDS,
        help="gate: timing rounds of fp32 and each variant, interleaved, one model loaded at "
        "a time; the medians are compared",
    )
    s.add_argument(
        "--speed-margin",
        type=_margin,
        default=SPEED_MARGIN,
        help="gate: a variant is faster only if fp32's median time is at least this many "
        "times its own (below: same speed, not recommended for speed)",
    )
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
        "--max-chrf-drop",
        type=float,
        default=1.0,
        help="quality budget for encoder-decoder (s2s) models, chrF points on held-out pairs",
    )


def _margin(text: str) -> float:
    value = argtypes.positive(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a margin: use 1.0 or more (1.05 = 5 %)")
    return value


def _block_size(text: str) -> int | str:
    if text == AUTO_BLOCK:
        return text
    if text.isdigit() and int(text) in BLOCK_SIZES:
        return int(text)
    sizes = ", ".join(map(str, BLOCK_SIZES))
    raise argparse.ArgumentTypeError(f"block size {text!r}: use one of {sizes} or {AUTO_BLOCK}")


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model
    from edgezoo.quantize.report import variants_table

    opts = QuantizeOptions(
        per_channel=not args.per_tensor,
        block_size=args.block_size,
        symmetric=not args.asymmetric,
        accuracy_level=args.accuracy_level,
        head_bits={"auto": "auto", "0": None, "4": 4, "8": 8}[args.head_bits],
        embeddings=not args.fp32_embeddings,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        for_tensorrt=args.for_ == "tensorrt",
        ppl_budget_pct=args.max_ppl_rise,
        acc_budget_points=args.max_acc_drop,
        chrf_budget_points=args.max_chrf_drop,
        data=args.data,
        speed_rounds=args.speed_rounds,
        speed_margin=args.speed_margin,
    )
    for target in dict.fromkeys(args.to):  # in order, each once
        variants = quantize_model(args.model_dir, target, opts)
    print(variants_table(variants))
    return 0
