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

An encoder–decoder variant is three graphs; each gets its own names, as Optimum's
quantizer and transformers.js spell them: ``encoder_model_quantized.onnx``,
``decoder_model_q4.onnx``, ``decoder_with_past_model_fp16.onnx`` …
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgezoo import atomic, manifest

SUFFIXES: dict[str, tuple[str, ...]] = {
    "int8": ("_quantized", "_int8"),
    "int4": ("_q4",),
    "fp16": ("_fp16",),
}
# The stems of the graphs that get aliases: a decoder LM / classifier, an encoder-decoder.
STEMS = ("model", "encoder_model", "decoder_model", "decoder_with_past_model")
ALIASES: dict[str, tuple[str, ...]] = {
    precision: tuple(f"model{s}.onnx" for s in suffixes) for precision, suffixes in SUFFIXES.items()
}
ALL_NAMES = frozenset(f"{stem}{s}.onnx" for stem in STEMS for ss in SUFFIXES.values() for s in ss)
OPTIMUM_GRAPHS = ("portable", "ort-optimized")  # in order of preference
METHOD_PREFERENCE = ("int8-dynamic", "weight-only-4", "fp16", "weight-only-8", "int8-static")


def choose(variants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """alias file name -> the variant it stands for (best Optimum-layout graph per precision)."""
    chosen = {}
    for precision, suffixes in SUFFIXES.items():
        candidates = [
            n
            for n, e in variants.items()
            if e.get("precision") == precision
            and e.get("graph") in OPTIMUM_GRAPHS
            and e.get("format") != "ort"
        ]
        if candidates:
            best = min(candidates, key=lambda n: _rank(variants[n]))
            for stem in graph_files(variants[best]):
                chosen.update({f"{stem}{s}.onnx": best for s in suffixes})
    return chosen


def graph_files(entry: dict[str, Any]) -> dict[str, str]:
    """alias stem -> graph file of a variant: ``model`` -> ``model.int8.onnx``, or one per
    graph of an encoder-decoder (``encoder_model`` -> ``encoder_model.int8.onnx``, ...)."""
    graphs = entry.get("graphs")
    files = [g["file"] for g in graphs.values()] if graphs else [entry.get("file", "model.onnx")]
    return {f.split(".", 1)[0]: f for f in files}


def _target(entry: dict[str, Any], alias: str) -> str:
    """The graph file ``alias`` names: the variant's one whose stem it starts with."""
    stem = alias.removesuffix(".onnx").rsplit("_", 1)[0]
    return graph_files(entry)[stem]


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
    for alias in sorted(ALL_NAMES):
        if alias not in chosen:  # no variant for it (any more): nothing may answer to the name
            (onnx_dir / alias).unlink(missing_ok=True)
    for alias, name in chosen.items():
        write_alias(onnx_dir / _target(data["variants"][name], alias), onnx_dir / alias)
    for name, entry in data["variants"].items():
        # An encoder-decoder variant also lists its other graphs' files there: they stay.
        kept = [a for a in entry.pop("aliases", None) or [] if a not in ALL_NAMES]
        mine = [a for a, n in chosen.items() if n == name]
        if kept or mine:
            entry["aliases"] = kept + mine
    manifest.write(model_dir, data)
    return chosen


def write_alias(graph: Path, alias: Path) -> None:
    """``alias`` becomes a hard link to ``graph`` (replacing any older one atomically)."""
    if alias.exists() and os.path.samefile(graph, alias):
        return  # linked already; renaming a link onto itself would leave the temp name behind
    tmp = alias.with_name(f".{alias.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(graph, tmp)
    except OSError:  # FAT, some network filesystems
        shutil.copyfile(graph, tmp)
    os.replace(tmp, alias)
    atomic.fsync_dir(alias.parent)
