"""Quantize: every variant is written, validated, measured and gated; failures leave nothing."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
import torch
from conftest import make_model_dir, tiny_llama

from edgezoo import manifest, runtime
from edgezoo.errors import CheckpointError, ConfigError, ExportError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.onnx_files import file_facts
from edgezoo.quantize import graphs
from edgezoo.quantize.pipeline import QuantizeOptions, _gate, quantize_model
from edgezoo.quantize.report import variants_table
from edgezoo.zoo import data
from edgezoo.zoo.config import BertConfig, LlamaConfig
from edgezoo.zoo.modeldir import build_model, save_model_dir
from edgezoo.zoo.tokenizer import save_tokenizer

LM = vars(tiny_llama(max_position_embeddings=128)).copy()
LM.pop("preset")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer, text_corpus):
    path = tmp_path_factory.mktemp("q-lm")
    make_model_dir(path, LlamaConfig(**LM), tokenizer)
    to_onnx(path, greedy_steps=8)
    # One timing round per variant: the tests check what the gate records, not its verdict
    # (5 rounds made this fixture 5-6 minutes of an AVX2 host's test run).
    opts = QuantizeOptions(data=str(text_corpus), calibration_samples=4, speed_rounds=1)
    for target in ("int8", "int4", "fp16", "int8-static"):
        quantize_model(path, target, opts)
    return path


def test_every_target_writes_a_measured_variant(lm_dir):
    variants = manifest.read(lm_dir)["variants"]
    names = ("int8", "gqa-int8", "gqa-int8-dynamic", "gqa-int4", "fp16", "int8-static")
    assert set(names) <= set(variants)
    for name in names:
        e = variants[name]
        assert e["sha256"] == file_facts(lm_dir / "onnx" / e["file"])["sha256"]
        assert (lm_dir / "onnx" / (e["file"] + ".data")).is_file()  # weights kept apart
        assert e["quality"]["perplexity"] > 0 and e["latency"]["decode_ms_per_token_p50"] > 0
        assert e["greedy_agreement"]["of"] == 64
        assert set(e["gate"]["ort-cpu"]) >= {"speedup", "quality_change", "within_budget", "faster"}
    sizes = {n: variants[n]["bytes"] for n in variants}
    assert sizes["gqa-int4"] < sizes["gqa-int8"] < sizes["gqa"]
    assert sizes["fp16"] < 0.75 * sizes["fp32"]
    assert variants["gqa-int4"]["quantization"]["embeddings_quantized"]
    # --head-bits auto: the head's bits follow the measured rule, and the graph has them
    for name in ("gqa-int4", "int4"):
        q = variants[name]["quantization"]
        choice, ppl = q["lm_head_choice"], q["lm_head_choice"]["perplexity"]
        within = ppl["head_int4"] <= ppl["source"] * (1 + choice["budget_pct"] / 100)
        assert choice["chosen_bits"] == (4 if within else 8) == q["lm_head_bits"]
        assert _head_bits(lm_dir / "onnx" / variants[name]["file"]) == q["lm_head_bits"]
    # near-lossless variants stay close to fp32 in quality on the same data
    base = variants["gqa"]["quality"]["perplexity"]
    assert abs(variants["gqa-int8"]["quality"]["perplexity"] / base - 1) < 0.01
    assert abs(variants["gqa-int8-dynamic"]["quality"]["perplexity"] / base - 1) < 0.01
    assert abs(variants["fp16"]["quality"]["perplexity"] / base - 1) < 0.001
    assert "| gqa-int4 | gqa | int4 |" in variants_table(variants)


def test_dynamic_int8_gqa_graph_quantizes_its_tied_head(lm_dir):
    """The tied head is untied so that it is an int8 MatMulInteger too (no fp32 MatMul
    left), and the rival int8 forms get one ``preferred``: what ``variant="int8"`` loads."""
    variants = manifest.read(lm_dir)["variants"]
    entry = variants["gqa-int8-dynamic"]
    assert entry["method"] == "int8-dynamic-head" and entry["graph"] == "gqa"
    assert entry["quantization"]["lm_head"] == "int8" and entry["quantization"]["untied_lm_head"]
    graph = onnx.load(str(lm_dir / "onnx" / entry["file"]), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMul" not in ops and "Transpose" not in ops
    weight_only = onnx.load(
        str(lm_dir / "onnx" / variants["gqa-int8"]["file"]), load_external_data=False
    )
    matmuls = [n for n in weight_only.graph.node if n.op_type == "MatMulNBits"]
    assert ops.count("MatMulInteger") == len(matmuls)  # every weight, the head too
    # one activation scale per token, and two-row decode steps (see kv_cache)
    assert "DynamicQuantizeLinear" not in ops and ops.count("QuantizeLinear") > 0
    assert entry["quantization"]["activation_scales"] == "per row" and entry["decode_rows"] == 2
    assert variants["int8"]["quantization"]["activation_scales"] == "per call"
    assert "decode_rows" not in variants["int8"]
    # 7-bit weights: AVX2's int8 kernel adds product pairs in 16 bits (see int8_dynamic)
    full = onnx.load(str(lm_dir / "onnx" / entry["file"]))
    codes = [
        onnx.numpy_helper.to_array(i)
        for i in full.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2
    ]
    assert codes and max(int(np.abs(c.astype(np.int32)).max()) for c in codes) <= 64
    assert entry["quantization"]["weight_bits"] == 7
    rivals = ("gqa-int8", "gqa-int8-dynamic")
    for use in ("requests", "multi-token calls", "batched decode"):  # one preferred form each
        chosen = [n for n in rivals if use in variants[n].get("preferred", {}).get("ort-cpu", [])]
        assert len(chosen) == 1, (use, chosen)
    for name in rivals:
        timed = variants[name]["rival_timing"]["ort-cpu"]
        assert timed["request_ms"] > 0 and timed["check_ms"] > 0 and timed["against"]
        assert timed["batch_step_ms"] > 0
    plain = runtime.load(lm_dir, backend="ort-cpu", variant="int8")
    assert "requests" in variants[plain.variant]["preferred"]["ort-cpu"]
    assert "quality gate timed them" in plain.reason
    spec = runtime.load(lm_dir, backend="ort-cpu", variant="int8", draft="prompt-lookup")
    assert "multi-token calls" in variants[spec.target.variant]["preferred"]["ort-cpu"]
    served = runtime.load(lm_dir, backend="ort-cpu", variant="int8", expected_batch=8)
    assert "batched decode" in variants[served.variant]["preferred"]["ort-cpu"]


def test_per_row_activations_quantize_each_row_with_its_own_scale(tmp_path):
    """The rewritten graph computes what symmetric per-row int8 does (numpy), and a row's
    result does not change with the rows beside it — unlike one scale per call."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "rows", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "rows", 48])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )
    per_call = onnx.load(str(dst))
    per_row = onnx.ModelProto()
    per_row.CopyFrom(per_call)
    assert graphs.per_row_activations(per_row) == 1
    x = rng.standard_normal((1, 5, 64)).astype(np.float32)
    x[0, 3] *= 40  # an outlier row
    x[0, 4] = 0  # an all-zero row: scale floored, output zero
    run = {
        name: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for name, m in (("call", per_call), ("row", per_row))
    }
    w_inits = {i.name: numpy_helper.to_array(i) for i in per_call.graph.initializer}
    w_q = next(v for v in w_inits.values() if v.dtype == np.int8 and v.ndim == 2)
    w_scale = next(v for k, v in w_inits.items() if k.endswith("scale"))
    scale = np.abs(x).max(-1, keepdims=True) / 127
    x_q = np.round(x / np.maximum(scale, np.finfo(np.float32).tiny))
    want = (x_q @ w_q.astype(np.float32)) * scale * w_scale
    got = run["row"].run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.all(got[0, 4] == 0)
    alone = run["row"].run(None, {"x": x[:, :3]})[0]
    assert np.array_equal(alone, got[:, :3])  # the outlier row changes no other row
    assert not np.allclose(
        run["call"].run(None, {"x": x[:, :3]})[0], run["call"].run(None, {"x": x})[0][:, :3]
    )


def _head_bits(path) -> int:
    """The ``bits`` of the MatMulNBits that produces the logits."""
    graph = onnx.load(str(path), load_external_data=False).graph
    (head,) = [n for n in graph.node if "logits" in n.output]
    return next(a.i for a in head.attribute if a.name == "bits")


@pytest.mark.parametrize("budget_pct, bits", [(1e6, 4), (-100.0, 8)])
def test_head_bits_auto_keeps_int4_only_within_the_budget(
    lm_dir, text_corpus, tmp_path, budget_pct, bits
):
    from edgezoo.quantize.evaluate import eval_data
    from edgezoo.quantize.graphs import weight_only
    from edgezoo.quantize.head_choice import choose_head_bits

    src = lm_dir / "onnx" / "model.gqa.onnx"
    staged = tmp_path / "model.x.onnx"
    details = choose_head_bits(
        src,
        staged,
        lambda dst, head: weight_only(src, dst, 4, head_bits=head),
        lm_dir,
        eval_data(lm_dir, str(text_corpus)).lm_windows,
        budget_pct,
        "gqa",
    )
    assert details["lm_head_choice"]["chosen_bits"] == bits == details["lm_head_bits"]
    assert _head_bits(staged) == bits


def test_quantized_graphs_use_the_expected_ops(lm_dir):
    ops = {
        n: {node.op_type for node in onnx.load(str(lm_dir / "onnx" / f"model.{n}.onnx")).graph.node}
        for n in ("int8", "gqa-int4", "int8-static")
    }
    assert "MatMulInteger" in ops["int8"] or "DynamicQuantizeMatMul" in ops["int8"]
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops["gqa-int4"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["int8-static"]


def _nbits_blocks(path) -> dict[str, tuple[int, int]]:
    """Each MatMulNBits node's (K, block_size)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    attrs = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
    return {i: (a["K"], a["block_size"]) for i, a in enumerate(attrs)}


def test_weight_only_blocks_auto_per_matrix_for_int8_and_32_for_int4(lm_dir, tmp_path):
    """``--block-size auto``: each int8 matrix takes the widest block dividing its input
    dimension (K 64 and 128 here: two passes), int4 keeps 32; a fixed size goes to all."""
    variants = manifest.read(lm_dir)["variants"]
    int8 = _nbits_blocks(lm_dir / "onnx" / variants["gqa-int8"]["file"])
    assert all(block == graphs.widest_block(k) and k % block == 0 for k, block in int8.values())
    assert {block for _, block in int8.values()} == {64, 128}
    assert variants["gqa-int8"]["quantization"]["block_size"] == "per matrix, 64-128"
    int4 = _nbits_blocks(lm_dir / "onnx" / variants["gqa-int4"]["file"])
    assert {block for _, block in int4.values()} == {32}
    assert variants["gqa-int4"]["quantization"]["block_size"] == 32
    src, dst = lm_dir / "onnx" / "model.gqa.onnx", tmp_path / "model.fixed.onnx"
    details = graphs.weight_only(src, dst, 8, block_size=16, head_bits=None, embeddings=False)
    assert {block for _, block in _nbits_blocks(dst).values()} == {16}
    assert details["block_size"] == 16
    assert [graphs.widest_block(k) for k in (64, 288, 1376, 2048, 100)] == [64, 32, 32, 256, 32]


def test_weight_only_auto_blocks_quantize_unnamed_matmuls(tmp_path):
    """Per-matrix passes pick nodes by name: unnamed ones (some exporters) get names first,
    so each is quantized once, with its own block."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 128), np.float32), rng.standard_normal((128, 32), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["y"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    src, dst = tmp_path / "two.onnx", tmp_path / "two.q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    graphs.weight_only(src, dst, 8, head_bits=None, embeddings=False)
    assert sorted(_nbits_blocks(dst).values()) == [(64, 64), (128, 128)]
    x = rng.standard_normal((1, 64), np.float32)
    import onnxruntime as ort

    y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ w1 @ w2  # int8 weights and (accuracy level 4) activations: ~1 % of the range
    assert np.abs(y - ref).max() < 0.03 * np.abs(ref).max()


def test_block_size_argument():
    from edgezoo.quantize.cli import _block_size

    assert _block_size("auto") == "auto" and _block_size("256") == 256
    from edgezoo.quantize import cli

    assert sorted(cli.BLOCK_SIZES) == sorted(graphs.BLOCK_SIZES)  # the CLI's copy agrees
    for bad in ("512", "12", "big"):
        with pytest.raises(argparse.ArgumentTypeError, match="use one of 16, 32, 64, 128, 256"):
            _block_size(bad)


def test_runtime_picks_variants_by_precision_and_auto(lm_dir):
    lm = runtime.load(lm_dir, backend="ort-cpu", variant="int4")
    assert (
        lm.variant == "gqa-int4" and len(lm.generate("def f():", max_new_tokens=8).token_ids) == 8
    )
    auto = runtime.load(lm_dir, backend="ort-cpu", variant="auto")
    recommended = [n for n, e in manifest.read(lm_dir)["variants"].items() if e.get("recommended")]
    assert (auto.variant in recommended) if recommended else auto.variant == "gqa"
    assert "auto" in auto.reason


def test_gate_needs_speed_and_quality():
    base = {"quality": {"perplexity": 10.0}, "latency": {"decode_ms_per_token_p50": 2.0}}
    opts = QuantizeOptions()

    def verdict(ppl, ms):
        return _gate(
            {"quality": {"perplexity": ppl}, "latency": {"decode_ms_per_token_p50": ms}},
            base,
            "gqa",
            opts,
        )

    assert verdict(10.1, 1.0)["recommended"]["ort-cpu"]["speedup"] == 2.0
    assert verdict(10.1, 2.5)["recommended"] == {}  # slower
    assert verdict(10.5, 1.0)["recommended"] == {}  # 5 % worse > 2 % budget
    assert not verdict(10.5, 1.0)["gate"]["ort-cpu"]["within_budget"]


def test_int8_static_for_tensorrt_is_symmetric(lm_dir, text_corpus):
    variants = quantize_model(
        lm_dir,
        "int8-static",
        QuantizeOptions(
            data=str(text_corpus), calibration_samples=4, for_tensorrt=True, speed_rounds=1
        ),
    )
    entry = variants["int8-static-trt"]
    assert "ort-trt" in entry["backends"] and entry["quantization"]["symmetric_activations"]
    graph = onnx.load(str(lm_dir / "onnx" / entry["file"])).graph
    zero_points = {
        i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if "zero_point" in i.name
    }
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points.values())


def test_classifier_int8(tmp_path, tokenizer, labelled_csv):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=600,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        num_labels=3,
        id2label=dict(
            enumerate(sorted({label for _, label in data.read_labelled(str(labelled_csv))}))
        ),
    )
    save_model_dir(build_model(cfg).eval(), tmp_path)
    save_tokenizer(tokenizer, tmp_path, 128)
    to_onnx(tmp_path)
    variants = quantize_model(
        tmp_path, "int8", QuantizeOptions(data=str(labelled_csv), speed_rounds=1)
    )
    assert (
        0 <= variants["int8"]["quality"]["accuracy"] <= 1
        and "classify_ms_p50" in variants["int8"]["latency"]
    )
    assert "accuracy points" in variants["int8"]["gate"]["ort-cpu"]["quality_change"]


def test_bad_input_and_failed_variants_leave_nothing(lm_dir, tmp_path, monkeypatch, text_corpus):
    with pytest.raises(ConfigError, match="choose one of"):
        quantize_model(lm_dir, "int3")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="edgezoo export"):
        quantize_model(tmp_path, "int8")

    def broken(src, dst, *a, **k):
        dst.write_bytes(b"not an onnx graph")
        return {}

    monkeypatch.setattr(graphs, "weight_only", broken)
    before = sorted(p.name for p in (lm_dir / "onnx").iterdir())
    with pytest.raises(ExportError):
        quantize_model(lm_dir, "int4", QuantizeOptions(data=str(text_corpus)))
    assert sorted(p.name for p in (lm_dir / "onnx").iterdir()) == before


def test_int8_forms_benchmark_measures_and_tabulates(lm_dir):
    """The multi-token column is a real timing ratio, and the table divides by GenAI's row."""
    from benchmarks.int8_forms import multi_token_cost, to_markdown

    assert 0.2 < multi_token_cost(lm_dir, "gqa-int8-dynamic", 1, tokens=8) < 50
    row = {"size": "nano", "prompt": 32, "rounds": 1, "peak_rss_mb": 80.0, "greedy_equal_genai": 16}
    results = {
        "machine": {"cpu": "x", "cores": 2, "int8_units": "amx_int8", "onnxruntime": "1"},
        "threads": 2,
        "rows": [
            row | {"runtime": "ort-genai int8", "decode_ms": 2.0, "ttft_ms": 10.0},
            row
            | {"runtime": "edgezoo gqa-int8-dynamic", "decode_ms": 1.0, "ttft_ms": 2.5}
            | {"multi_token_cost": 1.2},
            {"size": "nano", "prompt": 32, "runtime": "edgezoo gqa-int8", "note": "failed: x"},
        ],
    }
    table = to_markdown(results)
    assert (
        "| nano | 32 | edgezoo gqa-int8-dynamic | 1.000 | 0.50 | 2.5 | 0.25 | 80 | 1.20× | 16 |"
        in table
    )
    assert "failed: x" in table and "(amx_int8)" in table


def test_repeated_cast_nodes_of_the_fp16_converter_are_dropped():
    """onnxruntime 1.31's converter writes one Cast per fp32-kept consumer of an fp16
    tensor, all with one name and output: ORT refuses that graph until they are one."""
    from onnx import TensorProto, helper

    cast = helper.make_node("Cast", ["h"], ["h_cast_to_fp32"], to=1, name="h_cast_to_fp32_node")
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to_half"),
        cast,
        helper.make_node("Softmax", ["h_cast_to_fp32"], ["a"], axis=-1, name="softmax_a"),
        cast,
        helper.make_node("ReduceMax", ["h_cast_to_fp32"], ["b"], keepdims=1, name="max_b"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "a")]
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [vi[0]], [vi[1], b]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    import onnxruntime as ort

    with pytest.raises(Exception, match=r"same node name|Duplicate"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert graphs.drop_repeated_nodes(model) == 1
    assert [n.name for n in model.graph.node].count("h_cast_to_fp32_node") == 1
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    a, mx = sess.run(None, {"x": x})
    assert np.allclose(a, np.exp(x) / np.exp(x).sum(), atol=1e-3) and mx[0, 0] == 4.0
    assert graphs.drop_repeated_nodes(model) == 0
