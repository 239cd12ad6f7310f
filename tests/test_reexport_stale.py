"""Re-exporting other weights drops the quantized variants made from the old ones."""

from __future__ import annotations

import json

from conftest import make_model_dir, tiny_llama

from edgezoo import manifest, runtime
from edgezoo.export.onnx_export import to_onnx
from edgezoo.quantize.pipeline import quantize_model

EXPORT = {"greedy_steps": 4, "fast": False, "optimize": False}


def _recommend(model_dir, name: str) -> None:
    """Mark ``name`` as the gate would when it wins on ort-cpu (measuring takes too long)."""
    data = manifest.read(model_dir)
    verdict = {"speedup": 2.0, "quality_change": "+0.1 % perplexity"}
    data["variants"][name]["recommended"] = {"ort-cpu": verdict}
    manifest.write(model_dir, data)


def test_reexport_with_new_weights_drops_quantized_variants(tmp_path, tokenizer):
    model_dir = tmp_path / "lm"
    make_model_dir(model_dir, tiny_llama(), tokenizer, seed=0)
    to_onnx(model_dir, **EXPORT)
    quantize_model(model_dir, "int8", measure_all=False)
    int8 = manifest.read(model_dir)["variants"]["int8"]
    fp32 = manifest.read(model_dir)["variants"]["fp32"]
    assert int8["source_sha256"] == fp32["sha256"]
    assert int8["source_weights_sha256"] == fp32["source_weights_sha256"]
    aliases = int8.get("aliases", [])  # Optimum / transformers.js names of the same graph
    assert aliases and all((model_dir / "onnx" / a).exists() for a in aliases)
    _recommend(model_dir, "int8")
    assert runtime.load(model_dir, backend="ort-cpu", variant="auto").variant == "int8"

    to_onnx(model_dir, **EXPORT)  # the same weights again: the int8 graph still fits them
    assert "int8" in manifest.read(model_dir)["variants"]

    make_model_dir(model_dir, tiny_llama(), tokenizer, seed=1)  # "retrained": new weights
    to_onnx(model_dir, **EXPORT)
    variants = manifest.read(model_dir)["variants"]
    assert "int8" not in variants
    assert not (model_dir / "onnx" / int8["file"]).exists()
    assert not (model_dir / "onnx" / (int8["file"] + ".data")).exists()
    assert not any((model_dir / "onnx" / a).exists() for a in aliases)
    lm = runtime.load(model_dir, backend="ort-cpu", variant="auto")
    assert lm.variant == "fp32"
    on_disk = json.loads((model_dir / "onnx" / "manifest.json").read_text())
    assert set(on_disk["variants"]) == {"fp32"}


def test_reexport_without_a_graph_drops_that_graph_of_the_old_weights(tmp_path, tokenizer):
    model_dir = tmp_path / "lm"
    make_model_dir(model_dir, tiny_llama(), tokenizer, seed=0)
    to_onnx(model_dir, greedy_steps=4, fast=True, optimize=False)
    assert "gqa" in manifest.read(model_dir)["variants"]
    make_model_dir(model_dir, tiny_llama(), tokenizer, seed=1)
    to_onnx(model_dir, **EXPORT)  # no GQA graph this time
    assert set(manifest.read(model_dir)["variants"]) == {"fp32"}
    assert runtime.load(model_dir, backend="ort-cpu", variant="auto").variant == "fp32"


def test_an_export_replaces_its_own_graphs_without_calling_them_stale(tmp_path, capsys):
    """Recording the new fp32 graph must not drop (and tell users to rebuild) the opt/gqa
    graphs the same export records next; a graph it does not write is still dropped."""
    (tmp_path / "onnx").mkdir()
    old = {"source_weights_sha256": "old", "sha256": "g0"}
    manifest.write(
        tmp_path,
        {
            "variants": {
                "fp32": {**old, "file": "model.onnx"},
                "gqa": {**old, "file": "model.gqa.onnx"},
                "opt": {**old, "file": "model.opt.onnx"},
            }
        },
    )
    new = {"source_weights_sha256": "new", "sha256": "g1"}
    manifest.add_variant(tmp_path, "fp32", {**new, "file": "model.onnx"}, recording=("fp32", "gqa"))
    variants = manifest.read(tmp_path)["variants"]
    assert set(variants) == {"fp32", "gqa"}  # gqa is about to be replaced; opt is stale
    assert "removed opt from" in capsys.readouterr().err
