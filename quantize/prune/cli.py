"""``edgezoo prune``: the subcommand's arguments and what it runs.

Only argparse and torch-free modules are imported at module level: ``edgezoo --help``
builds this parser and must stay fast and work on runtime-only installs without torch.
``cmd_prune`` imports the pruning code when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edgezoo.quantize.prune.importance import IMPORTANCE


def add_prune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``edgezoo prune`` to the CLI's subparsers and return its parser."""
    s = subparsers.add_parser(
        "prune",
        help="remove attention heads / MLP channels (smaller matrices) or sparsify weights, into a new model dir",
        description=(
            "Structured pruning really shrinks the matrices (faster and smaller everywhere); "
            "--sparsity zeroes weights, which only compresses: dense ONNX Runtime / TensorRT "
            "kernels do not get faster. The output is an ordinary model dir: train, export "
            "and quantize it like any other."
        ),
    )
    s.add_argument("model_dir", help="zoo model dir to prune (it is not modified)")
    s.add_argument("--out", help="model dir to write (default: MODEL_DIR-pruned)")
    s.add_argument(
        "--heads",
        type=float,
        default=0.0,
        help="fraction of attention heads to remove per layer (Llama: whole KV groups)",
    )
    s.add_argument(
        "--mlp", type=float, default=0.0, help="fraction of MLP channels to remove per layer"
    )
    s.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="global unstructured sparsity of the block Linear weights (compression only)",
    )
    s.add_argument(
        "--importance",
        choices=IMPORTANCE,
        default="weight",
        help="rank heads/channels by weight norms or by activations on calibration text",
    )
    s.add_argument("--calib-data", help="text for --importance activation (default: --data)")
    s.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 4")
    s.add_argument(
        "--finetune-steps", type=int, default=0, help="recovery fine-tune steps after pruning"
    )
    s.add_argument(
        "--finetune-lr", type=float, default=1e-3, help="learning rate of the recovery fine-tune"
    )
    s.add_argument("--batch-size", type=int, default=16, help="fine-tune batch (sequences)")
    s.add_argument(
        "--data",
        help="fine-tune / evaluation data (default: the built-in corpus for the family)",
    )
    s.add_argument(
        "--no-eval",
        dest="evaluate",
        action="store_false",
        help="skip perplexity / accuracy before and after (slow on the built-in corpus)",
    )
    s.add_argument("--force", action="store_true", help="replace a non-empty --out")
    s.add_argument(
        "--rank-ratio",
        type=float,
        help="instead: report what truncated-SVD factorisation at this rank ratio would save "
        "and cost (in memory only; writes nothing)",
    )
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no fine-tune progress bar"
    )
    s.set_defaults(fn=cmd_prune, extras=("train",))
    return s


def cmd_prune(args: argparse.Namespace) -> int:
    if args.rank_ratio is not None:
        from edgezoo.quantize.prune.low_rank import low_rank_factorize
        from edgezoo.zoo.modeldir import load_model

        report = low_rank_factorize(load_model(args.model_dir), args.rank_ratio)
        print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else report.table())
        return 0
    from edgezoo.quantize.prune.model_dir import prune_dir

    src = Path(args.model_dir).resolve()
    out = args.out or str(src.with_name(src.name + "-pruned"))
    report = prune_dir(
        args.model_dir,
        out,
        heads=args.heads,
        mlp=args.mlp,
        sparsity=args.sparsity,
        importance=args.importance,
        calib_data=args.calib_data,
        calib_batches=args.calib_batches,
        finetune_steps=args.finetune_steps,
        data=args.data,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.batch_size,
        evaluate=args.evaluate,
        force=args.force,
        progress=args.progress,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0
