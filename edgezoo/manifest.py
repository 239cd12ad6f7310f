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
import sys
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
    """A variant names plain files inside ``onnx/`` (its graph, and an encoder-decoder's
    ``graphs``): never a path that leaves the folder."""
    file = entry.get("file") if isinstance(entry, dict) else None
    graphs = entry.get("graphs", {}) if isinstance(entry, dict) else {}
    if not isinstance(graphs, dict) or not all(isinstance(g, dict) for g in graphs.values()):
        raise CheckpointError(
            f"{path}: variant {name!r} has graphs {graphs!r}, not role -> {{'file': ...}}; "
            "fix or delete the entry, or re-run the export."
        )
    for f in (file, *(g.get("file") for g in graphs.values())):
        if not _plain_name(f):
            raise CheckpointError(
                f"{path}: variant {name!r} names {f!r}, not a file name inside onnx/; "
                "fix or delete the entry, or re-run the export."
            )


def _plain_name(file: Any) -> bool:
    return (
        isinstance(file, str)
        and bool(file)
        and file not in (".", "..")
        and "/" not in file
        and "\\" not in file
        and Path(file).name == file
    )


def variant_files(entry: dict[str, Any]) -> list[str]:
    """Every graph file a variant names: its ``file`` and, for an encoder-decoder, the
    others in ``graphs`` (each with its weights beside it)."""
    graphs = [g["file"] for g in (entry.get("graphs") or {}).values()]
    return list(dict.fromkeys([entry["file"], *graphs]))


def write(model_dir: str | Path, data: dict[str, Any]) -> None:
    atomic.write_json(onnx_dir(model_dir) / MANIFEST, data)


def add_variant(
    model_dir: str | Path,
    name: str,
    entry: dict[str, Any],
    *,
    recording: tuple[str, ...] = (),
    **top: Any,
) -> dict[str, Any]:
    """Record (or replace) one variant, keeping the others; returns the new manifest.

    A derived variant (``source_variant``: quantized, .ort) is stamped with the hash of the
    source it was made from. Replacing a source with one made from other weights drops the
    variants derived from the old one, entries and files: ``variant="auto"`` must never
    pick an int8 graph of weights the model dir no longer holds. ``recording``: the other
    variants the caller records next (an export's graphs), which are replaced, not dropped."""
    data = read(model_dir)
    data.update(top)
    variants = data["variants"]
    source = variants.get(entry.get("source_variant", ""))
    if source is not None:
        entry = {**entry, "source_sha256": source.get("sha256")}
        if source.get("source_weights_sha256"):
            entry["source_weights_sha256"] = source["source_weights_sha256"]
    old = variants.get(name)
    variants[name] = entry
    dropped = _drop_stale(variants, name, old, entry, keep=set(recording))
    write(model_dir, data)
    in_use = {f for v in variants.values() for f in variant_files(v)}
    for gone in dropped.values():  # after the manifest stopped naming them
        # An export publishes all its graphs before recording them one by one, so a
        # graph it wrote (no source_variant) may be on disk under a dropped entry's name.
        if gone.get("source_variant") and gone["file"] not in in_use:
            aliases = [a for a in gone.get("aliases") or [] if Path(str(a)).name == a]
            graphs = [g for g in variant_files(gone) if g not in in_use]
            weights = [g + ext for g in graphs for ext in (".data", "_data")]
            for f in (*graphs, *weights, *aliases):
                (onnx_dir(model_dir) / f).unlink(missing_ok=True)
    if dropped:
        print(
            f"edgezoo: removed {', '.join(dropped)} from {model_dir}: made from the previous "
            f"{name} graph's weights; re-run `edgezoo quantize` to rebuild them.",
            file=sys.stderr,
        )
    return data


def is_stale(derived: dict[str, Any], source: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Was ``derived`` made from other weights than ``source`` (which replaced ``old``)?

    Compared by the model weights' sha256 where both record it (a re-export of the same
    weights keeps its quantized variants), else by the source graph's sha256; an entry
    from before either was recorded is stale when the source graph changed."""
    if derived.get("source_weights_sha256") and source.get("source_weights_sha256"):
        return derived["source_weights_sha256"] != source["source_weights_sha256"]
    if derived.get("source_sha256") and source.get("sha256"):
        return derived["source_sha256"] != source["sha256"]
    return old is not None and old.get("sha256") != source.get("sha256")


def _drop_stale(
    variants: dict[str, Any],
    name: str,
    old: dict[str, Any] | None,
    entry: dict[str, Any],
    keep: set[str],
) -> dict[str, dict[str, Any]]:
    """Remove (in place) the variants derived from the replaced ``name``, other exported
    graphs of other weights (an export that no longer writes, say, the GQA graph) and
    whatever was made from those."""
    weights = entry.get("source_weights_sha256")
    dropped = {
        k: v
        for k, v in variants.items()
        if k != name
        and k not in keep
        and (
            (v.get("source_variant") == name and is_stale(v, entry, old))
            or (
                weights
                and not entry.get("source_variant")
                and not v.get("source_variant")
                and v.get("source_weights_sha256") not in (None, weights)
            )
        )
    }
    while True:  # what was made from a dropped variant goes with it
        orphans = {
            k: v
            for k, v in variants.items()
            if k not in dropped and v.get("source_variant") in dropped
        }
        if not orphans:
            break
        dropped.update(orphans)
    for k in dropped:
        del variants[k]
    return dropped


def variant_file(model_dir: str | Path, name: str) -> Path:
    data = read(model_dir)
    if name not in data["variants"]:
        known = ", ".join(data["variants"]) or "none — run `edgezoo export` first"
        raise CheckpointError(f"{model_dir} has no ONNX variant {name!r}; available: {known}.")
    return onnx_dir(model_dir) / data["variants"][name]["file"]
