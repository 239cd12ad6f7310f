"""``edgezoo tune``: its flags and command (argparse only; Optuna and torch load when it runs)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgezoo.argtypes import at_least, positive
from edgezoo.zoo.presets import FAMILIES
from edgezoo.zoo.tune_space import TUNABLE

SAMPLERS = ("tpe", "random", "grid")  # the same as zoo.tune's, which imports optuna
PRUNERS = ("median", "halving", "none")


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "tune",
        help="search training settings (lr, warmup, batch, decay, depth at fixed size) with Optuna",
        description="Each trial trains a short run in this process; the study lives in SQLite "
        "(run the same command again to resume it, or from several processes to share it). "
        "Writes best_command.txt (a ready `edgezoo train` line), best_params.json and plots.",
    )
    s.add_argument("--out", required=True, help="folder for the study, trials and results")
    s.add_argument("--family", choices=FAMILIES, default="lm", help="lm, cls or s2s")
    s.add_argument("--size", default="nano", help="base size preset (its parameter budget)")
    s.add_argument("--data", help="corpus to tune on (default: the built-in one)")
    s.add_argument("--steps", type=at_least(1), default=200, help="training steps per trial")
    s.add_argument("--context", type=at_least(2), help="sequence length (default: the preset's)")
    s.add_argument("--vocab-size", type=at_least(8), help="tokenizer vocabulary")
    s.add_argument(
        "--batch-size", type=at_least(1), default=16, help="batch when it is not searched"
    )
    s.add_argument(
        "--eval-every", type=at_least(1), help="report to the pruner every N steps (steps/5)"
    )
    s.add_argument("--eval-batches", type=at_least(1), default=8, help="batches per report")
    s.add_argument("--seed", type=int, default=1337, help="seed for training and the sampler")
    s.add_argument("--device", default="cpu", help="where trials train")
    s.add_argument(
        "--trials", type=at_least(1), default=20, help="finished trials the study should hold"
    )
    s.add_argument("--timeout", type=positive, help="stop starting trials after this many seconds")
    s.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="how trials are chosen")
    s.add_argument("--pruner", choices=PRUNERS, default="median", help="how trials are cut")
    s.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///OUT/study.db)")
    s.add_argument("--study-name", default="edgezoo-tune", help="study within the storage")
    s.add_argument(
        "--search",
        type=lambda text: [n.strip().replace("-", "_") for n in text.split(",") if n.strip()],
        help=f"parameters to search, comma-separated (default: all of {','.join(TUNABLE)}); "
        "`layers` derives the width that keeps the preset's non-embedding parameters",
    )
    s.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a parameter's range: lr=1e-4:1e-2:log, layers=2:8, batch_size=8,16 or a fixed "
        "value weight_decay=0.1 (repeatable; adds NAME to --search; default: built-in ranges)",
    )
    s.add_argument(
        "--grid-points", type=at_least(1), default=3, help="values per range for --sampler grid"
    )
    s.set_defaults(fn=cmd_tune, extras=("train", "tune"))


def cmd_tune(args: argparse.Namespace) -> int:
    from edgezoo.zoo.tune import TuneConfig, run_tune

    names = set(TuneConfig.__dataclass_fields__)
    result = run_tune(TuneConfig(**{k: v for k, v in vars(args).items() if k in names}))
    if result.best is None:
        print(json.dumps({"best": None, "note": "no trial completed; see the messages above"}))
        return 1
    return 0
