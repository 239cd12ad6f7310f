"""``onnx/manifest.json``: what each exported variant is and how good it is.

Shared by export, quantize (which add variants) and the runtime (which picks one), so it
imports neither torch nor onnx. One entry per variant, keyed by name::

    "fp32":      {"file": "model.onnx",       "graph": "portable", "precision": "fp32", ...}
    "gqa":       {"file": "model.gqa.onnx",   "graph": "gqa",      "precision": "fp32", ...}
    "gqa-int4":  {"file": "model.gqa-int4.onnx", "graph": "gqa",   "precision": "int4", ...}

``graph`` says how the KV cache works: ``portable`` concatenates past and new keys
(Optimum layout, runs on any backend, TensorRT included); ``gqa`` uses ONNX Runtime's
fused GroupQueryAttention with one preallocated cache buffer updated in place (ORT only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgezoo import atomic
from edgezoo.errors import CheckpointError

MANIFEST = "manifest.json"
ONNX_DIR = "onnx"


def onnx_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / ONNX_DIR


def read(model_dir: str | Path) -> dict[str, Any]:
    path = onnx_dir(model_dir) / MANIFEST
    if not path.is_file():
        return {"variants": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is corrupt ({e}); re-run `edgezoo export {model_dir}`."
        ) from e
    if not isinstance(data, dict) or not isinstance(data.setdefault("variants", {}), dict):
        raise CheckpointError(
            f"{path} is not an edgezoo manifest (a JSON object with a 'variants' object); "
            f"re-run `edgezoo export {model_dir}`."
        )
    for name, entry in data["variants"].items():
        _check_entry(path, name, entry)
    return data


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """A variant names a plain file inside ``onnx/``: never a path that leaves the folder."""
    file = entry.get("file") if isinstance(entry, dict) else None
    if (
        not isinstance(file, str)
        or not file
        or file in (".", "..")
        or "/" in file
        or "\\" in file
        or Path(file).name != file
    ):
        raise CheckpointError(
            f"{path}: variant {name!r} names {file!r}, not a file name inside onnx/; "
            "fix or delete the entry, or re-run the export."
        )


def write(model_dir: str | Path, data: dict[str, Any]) -> None:
    atomic.write_json(onnx_dir(model_dir) / MANIFEST, data)


def add_variant(
    model_dir: str | Path, name: str, entry: dict[str, Any], **top: Any
) -> dict[str, Any]:
    """Record (or replace) one variant, keeping the others; returns the new manifest."""
    data = read(model_dir)
    data.update(top)
    data["variants"][name] = entry
    write(model_dir, data)
    return data


def variant_file(model_dir: str | Path, name: str) -> Path:
    data = read(model_dir)
    if name not in data["variants"]:
        known = ", ".join(data["variants"]) or "none — run `edgezoo export` first"
        raise CheckpointError(f"{model_dir} has no ONNX variant {name!r}; available: {known}.")
    return onnx_dir(model_dir) / data["variants"][name]["file"]
