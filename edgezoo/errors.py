"""One family of user-facing errors.

Every error a user can cause (bad path, bad data, bad config, corrupt file, ...) is an
``EdgeZooError``: a ``ValueError`` whose message names the problem *and* the fix. The CLI
prints these without a stack trace; anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class EdgeZooError(ValueError):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(EdgeZooError):
    """Unknown family/size, inconsistent architecture, or a config that does not match."""


class DataError(EdgeZooError):
    """Missing, empty or malformed training / evaluation data."""


class CheckpointError(EdgeZooError):
    """A checkpoint or model dir that is missing, truncated or corrupt."""


class ResourceError(EdgeZooError):
    """Not enough disk or device memory for what was asked."""


class ExportError(EdgeZooError):
    """An ONNX export that failed or did not validate."""


class InputError(EdgeZooError):
    """A request the model cannot serve: empty prompt, prompt longer than the context, ..."""


class DistributedError(EdgeZooError):
    """Processes of one distributed run that cannot agree: a node missing, different commands."""


class MissingExtraError(EdgeZooError):
    """A stage whose optional dependencies (a pip extra) are not installed."""


# What each extra must bring for its stages to run (checked before a subcommand starts, so
# an edge install without torch answers with the pip command instead of an ImportError).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "safetensors", "tqdm", "rich"),
    "quantize": ("onnx", "onnx_ir", "sacrebleu"),
    "export": ("torch", "safetensors", "onnx", "onnxscript"),
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "cluster": ("ray",),
    "plots": ("matplotlib",),
    "tune": ("optuna", "sqlalchemy"),
}
# Needed on one path of a stage only (optimum: importing a Hugging Face architecture the zoo
# has no family for), so not checked up front; named with its extra when found missing.
LATE_MODULES: dict[str, str] = {"optimum": "export", "transformers": "export"}


def missing_extra(command: str, extra: str) -> MissingExtraError:
    return MissingExtraError(
        f"'{command}' needs the {extra} extra: pip install \"edgezoo[{extra}]\""
    )


def require_extras(command: str, extras: tuple[str, ...]) -> None:
    """Raise ``MissingExtraError`` naming the first extra whose modules are not installed."""
    from importlib.util import find_spec

    for extra in extras:
        if any(find_spec(module) is None for module in EXTRA_MODULES[extra]):
            raise missing_extra(command, extra)


def _extra_providing(module: str | None) -> str | None:
    top = (module or "").split(".")[0]
    found = next((extra for extra, mods in EXTRA_MODULES.items() if top in mods), None)
    return found or LATE_MODULES.get(top)


def run_guarded(fn: Callable[..., int], *args: Any, command: str = "edgezoo") -> int:
    """Run ``fn``; a user error prints one clear line (exit 2) instead of a stack trace.

    A missing optional dependency that a subcommand's declared extras did not catch (say,
    a module imported deep inside) is reported the same way, with the extra to install.
    """
    try:
        return fn(*args)
    except EdgeZooError as e:
        print(f"edgezoo: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = _extra_providing(e.name)
        if extra is None:
            raise
        print(f"edgezoo: error: {missing_extra(command, extra)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
