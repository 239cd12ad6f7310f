"""Quantize polish: Optimum / transformers.js file names, a noise-proof speed verdict."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model_dir, tiny_llama

from edgezoo import manifest
from edgezoo.cli import build_parser
from edgezoo.quantize.aliases import choose
from edgezoo.quantize.pipeline import QuantizeOptions, _gate, plan, quantize_model
from edgezoo.quantize.report import variants_table
from edgezoo.quantize.speed import one_loaded_at_a_time, speed_verdict


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tokenizer):
    from edgezoo.export.onnx_export import to_onnx

    path = tmp_path_factory.mktemp("q-alias")
    make_model_dir(path, tiny_llama(), tokenizer)
    to_onnx(path, greedy_steps=0, fast=False, optimize=False)
    for target in ("int8", "int4", "fp16"):
        quantize_model(path, target, QuantizeOptions(), measure_all=False)
    return path


def _logits(path):
    ids = np.array([[1, 100, 200, 300]], np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for spec in sess.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = ids
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones_like(ids)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
        else:
            feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
    return sess.run(["logits"], feeds)[0]


def test_quantized_variants_get_the_optimum_and_transformers_js_names(quantized):
    onnx_dir = quantized / "onnx"
    variants = manifest.read(quantized)["variants"]
    assert variants["int8"]["aliases"] == ["model_quantized.onnx", "model_int8.onnx"]
    assert variants["int4"]["aliases"] == ["model_q4.onnx"]
    assert variants["fp16"]["aliases"] == ["model_fp16.onnx"]
    assert "aliases" not in variants["fp32"]
    for entry in variants.values():
        for alias in entry.get("aliases", []):
            original = onnx_dir / entry["file"]
            assert (onnx_dir / alias).stat().st_ino == original.stat().st_ino  # no extra disk
            assert (onnx_dir / (entry["file"] + ".data")).stat().st_nlink == 1  # onnx reads it
            np.testing.assert_array_equal(
                _logits(onnx_dir / alias), _logits(onnx_dir / entry["file"])
            )
    card = (quantized / "README.md").read_text()
    assert "`model.int8.onnx`, `model_quantized.onnx`, `model_int8.onnx`" in card
    assert "- onnx" in card


def test_aliases_follow_a_requantized_variant(quantized):
    onnx_dir = quantized / "onnx"
    quantize_model(quantized, "int8", QuantizeOptions(per_channel=False), measure_all=False)
    alias = onnx_dir / "model_quantized.onnx"
    assert alias.stat().st_ino == (onnx_dir / "model.int8.onnx").stat().st_ino
    onnx.load(str(alias))  # weights too: onnx refuses data files with several hard links
    np.testing.assert_array_equal(
        _logits(onnx_dir / "model_quantized.onnx"), _logits(onnx_dir / "model.int8.onnx")
    )


def test_aliases_name_only_optimum_layout_graphs():
    variants = {
        "gqa-int4": {"precision": "int4", "graph": "gqa", "method": "weight-only-4"},
        "gqa-int8": {"precision": "int8", "graph": "gqa", "method": "weight-only-8"},
        "int8-static": {"precision": "int8", "graph": "portable", "method": "int8-static"},
        "int8": {"precision": "int8", "graph": "portable", "method": "int8-dynamic"},
    }
    assert choose(variants) == {"model_quantized.onnx": "int8", "model_int8.onnx": "int8"}
    opts = QuantizeOptions()
    jobs = plan({"fp32": {}, "opt": {}, "gqa": {}}, "int4", opts)
    assert [j[0] for j in jobs] == ["gqa-int4", "int4"]  # int4 in Optimum layout too


def test_speed_verdict_needs_a_margin_on_medians():
    base = [10.0, 10.2, 9.9, 10.1, 30.0]  # one round hit by a noisy neighbour
    same = speed_verdict(base, [9.8, 9.9, 9.7, 10.0, 9.9])
    assert same["verdict"] == "same speed" and 1.0 < same["speedup"] < 1.05
    assert same["rounds"] == 5 and same["baseline_ms"] == base
    assert same["spread_pct"]["baseline"] > 100 and same["variant_won_rounds"] == 5
    assert speed_verdict(base, [8.0, 8.1, 25.0, 7.9, 8.2])["verdict"] == "faster"
    assert speed_verdict(base, [11.0, 11.2, 10.9, 11.1, 11.0])["verdict"] == "slower"
    assert speed_verdict([10.0] * 5, [10 / 1.05] * 5)["verdict"] == "faster"  # exactly the margin
    assert speed_verdict([10.0] * 5, [9.6] * 5, margin=1.02)["verdict"] == "faster"
    with pytest.raises(ValueError):
        speed_verdict([], [1.0])


def test_gate_does_not_recommend_a_variant_within_the_noise():
    base = {"quality": {"perplexity": 10.0}, "latency": {"decode_ms_per_token_p50": 2.0}}
    entry = {"quality": {"perplexity": 10.1}, "latency": {"decode_ms_per_token_p50": 1.9}}
    opts = QuantizeOptions()
    noisy = speed_verdict([2.0, 2.1, 1.9, 2.0, 2.0], [1.95, 1.9, 2.0, 1.96, 1.94])
    gate = _gate(entry, base, "fp32", opts, noisy)
    assert gate["recommended"] == {}
    verdict = gate["gate"]["ort-cpu"]
    assert verdict["speed_verdict"] == "same speed" and not verdict["faster"]
    assert verdict["speed"]["variant_ms"] == [1.95, 1.9, 2.0, 1.96, 1.94]
    clear = speed_verdict([2.0] * 5, [1.5, 1.6, 1.5, 1.4, 1.5])
    assert _gate(entry, base, "fp32", opts, clear)["recommended"]["ort-cpu"]["speedup"] == 4 / 3
    table = variants_table(
        {
            "fp32": {**base, "graph": "portable", "precision": "fp32", "bytes": 1e6},
            "int8": {**entry, **gate, "graph": "portable", "precision": "int8", "bytes": 5e5},
        }
    )
    assert "same speed, median of 5 rounds" in table


def test_rounds_alternate_with_one_model_loaded_at_a_time():
    calls = []

    class Model:
        live = 0  # models loaded now

        def __init__(self):
            assert Model.live == 0, "a model is still loaded while another loads"
            Model.live += 1

        def __del__(self):
            Model.live -= 1

    def measure(name):
        model = Model()  # noqa: F841 (held until measure returns, as a loaded model is)
        calls.append(name)
        return float(len(calls))

    ms = one_loaded_at_a_time(["A", "B"], measure, rounds=4)
    assert "".join(calls) == "AB" + "BA" + "AB" + "BA"
    assert ms == {"A": [1.0, 4.0, 5.0, 8.0], "B": [2.0, 3.0, 6.0, 7.0]}
    with pytest.raises(ValueError, match="rounds"):
        one_loaded_at_a_time(["A"], measure, rounds=0)


def test_quantize_takes_a_comma_list_as_well_as_repeated_targets():
    parse = build_parser().parse_args
    assert parse(["quantize", "d", "--to", "int8,int4"]).to == ["int8", "int4"]
    assert parse(["quantize", "d", "--to", "int8", "--to", "fp16"]).to == ["int8", "fp16"]
    assert parse(["quantize", "--to", "int4", "d"]).to == ["int4"]
    with pytest.raises(SystemExit):
        parse(["quantize", "d", "--to", "int8,int3"])
    assert parse(["quantize", "d", "--to", "int8", "--speed-margin", "1.1"]).speed_margin == 1.1
    with pytest.raises(SystemExit):
        parse(["quantize", "d", "--to", "int8", "--speed-margin", "0.9"])


def test_rivals_are_gqa_graphs_of_one_precision_within_the_budget():
    from edgezoo.quantize.rivals import rivals

    ok = {"gate": {"ort-cpu": {"within_budget": True}}}
    over = {"gate": {"ort-cpu": {"within_budget": False}}}
    variants = {
        "gqa": {"graph": "gqa", "precision": "fp32"},
        "gqa-int8": {"graph": "gqa", "precision": "int8", **ok},
        "gqa-int8-dynamic": {"graph": "gqa", "precision": "int8", **ok},
        "gqa-int4": {"graph": "gqa", "precision": "int4", **ok},
        "int8": {"graph": "portable", "precision": "int8", **ok},
        "int8-static": {"graph": "portable", "precision": "int8", **ok},
    }
    assert rivals(variants) == [["gqa-int8", "gqa-int8-dynamic"]]
    variants["gqa-int8-dynamic"].update(over)  # rejected by the gate: no rival
    assert rivals(variants) == []
