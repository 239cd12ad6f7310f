"""The ``edgezoo`` command: one subcommand per stage, each registered by its stage.

Each stage's ``cli`` module adds its subcommands and names the pip extras they need
(``extras``); they are checked before a command runs, so an install without them gets
one line with the ``pip install`` to run instead of an ImportError. Heavy imports (torch,
onnx) happen inside the command that needs them: ``edgezoo --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgezoo import __version__
from edgezoo.errors import require_extras, run_guarded
from edgezoo.export import cli as export_cli
from edgezoo.quantize import cli as quantize_cli
from edgezoo.runtime import cli as runtime_cli
from edgezoo.zoo import cli as zoo_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgezoo",
        description="Train small transformers, export them to ONNX, shrink and run them at the edge.",
    )
    p.add_argument("--version", action="version", version=f"edgezoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    zoo_cli.register(sub)
    export_cli.register(sub)
    quantize_cli.register(sub)
    runtime_cli.register(sub)
    _register_demo(sub)
    for subparser in sub.choices.values():  # stages build them; defaults show in every --help
        subparser.formatter_class = DefaultsHelpFormatter
    return p


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter, minus the noise: no "(default: None)",
    nothing for on/off switches, nothing where the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


def _register_demo(subparsers: Any) -> None:
    s = subparsers.add_parser(
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
    s.set_defaults(fn=cmd_demo, extras=("export",))


def cmd_demo(args: argparse.Namespace) -> int:
    from edgezoo.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, size=args.size, steps=args.steps))
    return 0


def _run(args: argparse.Namespace) -> int:
    require_extras(args.command, args.extras)
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(_run, args, command=args.command)


if __name__ == "__main__":
    sys.exit(main())
