"""The file names Optimum and transformers.js look for, given to our quantized variants.

transformers.js picks a file by ``dtype``: ``onnx/model_quantized.onnx`` (q8, its default
on WASM), ``model_int8.onnx``, ``model_q4.onnx``, ``model_fp16.onnx``; Optimum's
``ORTModel*.from_pretrained(file_name=...)`` uses the same names. Only Optimum-layout
graphs (``portable`` / ``ort-optimized``: ``position_ids`` in, the KV cache grown by
concatenation) get them; our ``gqa`` graphs keep an in-place cache other tools cannot
drive.

An alias is a second name for the same graph file: a hard link (no extra disk; a copy
where the filesystem has none), listed in the variant's manifest entry as ``aliases``.
The graph names its weights file (``model.<variant>.onnx.data``) in its external-data
records, and that file sits in the same folder, so ONNX Runtime and Optimum load the
alias as they load the variant. The weights file itself is never linked: onnx refuses
to read external data that has several hard links (a guard against link attacks), and a
second data name would trip it for the variant too. transformers.js, which fetches
``<alias>_data`` for large models, therefore needs a single-file graph; see the README.
Aliases are rebuilt after every quantize run, so a replaced variant never leaves a
stale one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgezoo import atomic, manifest

ALIASES: dict[str, tuple[str, ...]] = {
    "int8": ("model_quantized.onnx", "model_int8.onnx"),
    "int4": ("model_q4.onnx",),
    "fp16": ("model_fp16.onnx",),
}
OPTIMUM_GRAPHS = ("portable", "ort-optimized")  # in order of preference
METHOD_PREFERENCE = ("int8-dynamic", "weight-only-4", "fp16", "weight-only-8", "int8-static")


def choose(variants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """alias file name -> the variant it stands for (best Optimum-layout graph per precision)."""
    chosen = {}
    for precision, names in ALIASES.items():
        candidates = [
            n
            for n, e in variants.items()
            if e.get("precision") == precision
            and e.get("graph") in OPTIMUM_GRAPHS
            and e.get("format") != "ort"
        ]
        if candidates:
            best = min(candidates, key=lambda n: _rank(variants[n]))
            chosen.update(dict.fromkeys(names, best))
    return chosen


def _rank(entry: dict[str, Any]) -> tuple[int, int]:
    method = entry.get("method", "")
    return (
        OPTIMUM_GRAPHS.index(entry["graph"]),
        METHOD_PREFERENCE.index(method) if method in METHOD_PREFERENCE else len(METHOD_PREFERENCE),
    )


def refresh_aliases(model_dir: str | Path) -> dict[str, str]:
    """Rebuild every alias file from the manifest and list them in it; returns alias -> variant."""
    model_dir = Path(model_dir)
    onnx_dir = manifest.onnx_dir(model_dir)
    data = manifest.read(model_dir)
    chosen = choose(data["variants"])
    for alias in (a for names in ALIASES.values() for a in names):
        if alias not in chosen:  # no variant for it (any more): nothing may answer to the name
            (onnx_dir / alias).unlink(missing_ok=True)
    for alias, name in chosen.items():
        write_alias(onnx_dir / data["variants"][name]["file"], onnx_dir / alias)
    for name, entry in data["variants"].items():
        entry.pop("aliases", None)
        mine = [a for a, n in chosen.items() if n == name]
        if mine:
            entry["aliases"] = mine
    manifest.write(model_dir, data)
    return chosen


def write_alias(graph: Path, alias: Path) -> None:
    """``alias`` becomes a hard link to ``graph`` (replacing any older one atomically)."""
    tmp = alias.with_name(f".{alias.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(graph, tmp)
    except OSError:  # FAT, some network filesystems
        shutil.copyfile(graph, tmp)
    os.replace(tmp, alias)
    atomic.fsync_dir(alias.parent)
