"""``edgezoo models | train | eval | tune``: the zoo's subcommands.

Only argparse and the torch-free preset tables are imported here, so ``edgezoo --help``
works on the edge install; each command imports torch when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgezoo.zoo import tune_cli
from edgezoo.zoo.train_config import add_arguments


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "models", help="list the size presets with parameters and weight memory"
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_models, extras=())

    s = subparsers.add_parser(
        "train", help="train a decoder LM or an encoder classifier into a model dir"
    )
    add_arguments(s)
    s.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine (>1: runs torchrun for you; DDP, or FSDP with --fsdp; "
        "with --tp T, T-way tensor parallel × N/T-way data parallel)",
    )
    s.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="with --nproc: restart failed workers this often; they resume from the last checkpoint",
    )
    s.set_defaults(fn=cmd_train, extras=("train",))

    s = subparsers.add_parser(
        "eval", help="evaluate a model dir (LM: loss/perplexity; cls: accuracy, macro-F1)"
    )
    s.add_argument("model_dir", help="model dir to evaluate (PyTorch weights)")
    s.add_argument(
        "--data",
        help="corpus (default: the one the model was trained on, from run.json, split the same "
        "way, so an LM's held-out perplexity matches eval.json; else the built-in one)",
    )
    s.add_argument(
        "--split",
        choices=("val", "train", "all"),
        default="val",
        help="which part of the data: the held-out split, the training split or all of it",
    )
    s.set_defaults(fn=cmd_eval, extras=("train",))

    tune_cli.register(subparsers)


def cmd_models(args: argparse.Namespace) -> int:
    from edgezoo.zoo.presets import summaries

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
        "\nlm = decoder LM (Llama: RMSNorm, RoPE, SwiGLU, grouped-query attention); cls = encoder classifier (BERT);\n"
        "s2s = encoder-decoder (T5 v1.1: relative position buckets, gated GELU; layers = per stack, ctx = default max length)."
    )
    print("Memory is weights only; params count the default vocabulary and tied embeddings once.")
    return 0


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def cmd_train(args: argparse.Namespace) -> int:
    from edgezoo.model_card import write_card

    if args.nproc > 1:
        from edgezoo.zoo.launch import launch
        from edgezoo.zoo.tensor_parallel import check_launch
        from edgezoo.zoo.train_config import config_from_args

        check_launch(config_from_args(args), args.nproc)

        code = launch(args.nproc, sys.argv[1:], args.max_restarts)
        write_card(args.out)
        return code
    from edgezoo.zoo.train import train
    from edgezoo.zoo.train_config import config_from_args

    result = train(config_from_args(args))
    write_card(result.out)  # again, now that eval.json and the last log lines are written
    print(json.dumps({"out": str(result.out), "steps": result.steps, **result.metrics}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edgezoo.zoo.evaluate import evaluate_dir

    print(json.dumps(evaluate_dir(args.model_dir, args.data, args.split), indent=2))
    return 0
