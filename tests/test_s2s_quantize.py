"""Quantized encoder–decoder variants: three graphs per variant, gated on held-out chrF.

One tiny model learns digits -> words (so quality means something), is exported, and gets
its int8 / int4 / fp16 variants; the tests read what that wrote and break copies of it.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import onnx
import pytest
import torch

from edgezoo import manifest, runtime
from edgezoo.cli import main
from edgezoo.errors import CheckpointError, ConfigError, ExportError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.onnx_files import file_facts
from edgezoo.quantize import graphs
from edgezoo.quantize.pipeline import QuantizeOptions, _gate, quantize_model
from edgezoo.quantize.report import variants_table
from edgezoo.quantize.seq2seq_eval import agreement
from edgezoo.runtime.seq2seq import Seq2SeqModel
from edgezoo.zoo.train import TrainConfig, train

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ROLES = ("encoder", "decoder", "decoder_with_past")
STEMS = ("encoder_model", "decoder_model", "decoder_with_past_model")
# The logit check is a sanity bound; int4 moves the logits of a 64-wide model by ~6 (its
# quality is then measured on held-out pairs like every variant's).
FAST = QuantizeOptions(speed_rounds=1, logit_tolerance=10.0)


def _digits(path, n: int = 600) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        digits = [rng.randrange(10) for _ in range(rng.randint(2, 5))]
        rows.append({"src": " ".join(map(str, digits)), "tgt": " ".join(WORDS[d] for d in digits)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A 1-layer T5 trained on digits -> words, exported, then int8, int4 and fp16 variants."""
    root = tmp_path_factory.mktemp("s2s-quant")
    _digits(root / "digits.jsonl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train fastest on one thread
    try:
        config = TrainConfig(
            family="s2s",
            size="nano",
            data=str(root / "digits.jsonl"),
            out=str(root / "run"),
            steps=200,
            batch_size=16,
            lr=1e-2,
            warmup_steps=10,
            vocab_size=300,
            layers=1,
            width=64,
            context=16,
            eval_every=1000,
            checkpoint_every=1000,
            log_every=20,
            device="cpu",
            progress=False,
            source_field="src",
            target_field="tgt",
            val_frac=0.1,
        )
        metrics = train(config).metrics
        to_onnx(root / "run", greedy_steps=8)
    finally:
        torch.set_num_threads(threads)
    quantize_model(root / "run", "int8", FAST, measure_all=False)
    quantize_model(root / "run", "int4", FAST, measure_all=False)
    variants = quantize_model(root / "run", "fp16", FAST)  # measures and gates all of them
    return root / "run", variants, metrics


def test_each_target_is_one_variant_of_three_graphs(quantized):
    model_dir, variants, _ = quantized
    data = manifest.read(model_dir)
    fp32 = variants["fp32"]
    for name in ("int8", "int4", "fp16"):
        e = variants[name]
        assert e["source_variant"] == "fp32" and e["graph"] == "portable"
        assert e["source_weights_sha256"] == fp32["source_weights_sha256"]
        assert [e["graphs"][r]["file"] for r in ROLES] == [f"{s}.{name}.onnx" for s in STEMS]
        for role in ROLES:
            g = e["graphs"][role]
            path = model_dir / "onnx" / g["file"]
            assert (model_dir / "onnx" / (g["file"] + ".data")).is_file()  # weights kept apart
            assert {k: g[k] for k in ("sha256", "bytes")} == file_facts(path)
            assert g["inputs"] == fp32["graphs"][role]["inputs"]  # the runtime feeds it alike
        assert e["bytes"] == sum(e["graphs"][r]["bytes"] for r in ROLES)
        assert e["sha256"] == e["graphs"]["decoder"]["sha256"]
        assert 0 <= e["max_abs_diff_vs_fp32"] <= FAST.logit_tolerance
        assert {"chrf", "bleu", "exact_match", "baseline_chrf", "examples"} <= set(e["quality"])
        assert e["greedy_agreement"]["of"] == e["quality"]["examples"] > 0
        assert e["latency"]["new_tokens"] == 64 and e["latency"]["decode_ms_per_token_p50"] > 0
        gate = e["gate"]["ort-cpu"]
        assert "chrF points" in gate["quality_change"] and gate["baseline"] == "fp32"
    assert data["quality_budget"]["chrf_points"] == 1.0
    sizes = {n: variants[n]["bytes"] for n in ("fp32", "int8", "int4", "fp16")}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"] and sizes["fp16"] < sizes["fp32"]
    ops = {
        r: {n.op_type for n in onnx.load(str(model_dir / "onnx" / f"{s}.int4.onnx")).graph.node}
        for r, s in zip(ROLES, STEMS, strict=True)
    }
    assert all("MatMulNBits" in o for o in ops.values())
    assert variants["int4"]["quantization"]["fp32_tables"] == 1  # the relative position bias
    table = variants_table(variants)
    assert "| int8 | int8 |" in table and "held-out pairs" in table


def test_quality_is_measured_as_training_measured_it(quantized):
    """fp32 through ONNX Runtime scores the held-out pairs as training's eval.json did;
    int8 and fp16 stay within the 1-point chrF budget and mostly write fp32's very tokens."""
    _, variants, metrics = quantized
    fp32 = variants["fp32"]["quality"]
    assert fp32["examples"] == metrics["val_examples"]
    assert fp32["chrf"] == pytest.approx(metrics["val_chrf"], abs=0.5)
    assert fp32["chrf"] > fp32["baseline_chrf"] + 20  # the model learned the task
    for name, at_least in (("int8", 0.9), ("fp16", 0.95)):
        q, agree = variants[name]["quality"], variants[name]["greedy_agreement"]
        assert abs(q["chrf"] - fp32["chrf"]) <= 1.5, name  # one target of 44 is ~0.6
        assert agree["identical"] >= at_least * agree["of"], (name, agree)
    assert variants["int4"]["quality"]["chrf"] > fp32["baseline_chrf"]


def test_load_generate_and_auto_follow_the_gate(quantized, capsys):
    model_dir, variants, _ = quantized
    fp32 = runtime.load(model_dir, backend="ort-cpu", variant="fp32")
    int8 = runtime.load(model_dir, backend="ort-cpu", variant="int8")
    assert isinstance(int8, Seq2SeqModel) and int8.variant == "int8"
    sources = ["3 1 4", "2 7 1 8 2"]
    assert [g.text for g in int8.generate(sources)] == [g.text for g in fp32.generate(sources)]
    auto = runtime.load(model_dir, backend="ort-cpu")
    recommended = {n: e for n, e in variants.items() if e.get("recommended")}
    if recommended:
        best = max(recommended, key=lambda n: recommended[n]["recommended"]["ort-cpu"]["speedup"])
        assert auto.variant == best
    else:
        assert auto.variant == "fp32" and "no quantized variant" in auto.reason
    assert main(["generate", str(model_dir), "--variant", "int4", "5 5"]) == 0
    out = capsys.readouterr()
    assert "using variant int4" in out.err and out.out.strip()


def test_gate_budget_is_chrf_points():
    base = {"quality": {"chrf": 60.0}, "latency": {"decode_ms_per_token_p50": 2.0}}

    def verdict(chrf, ms, budget=1.0):
        entry = {"quality": {"chrf": chrf}, "latency": {"decode_ms_per_token_p50": ms}}
        return _gate(entry, base, "fp32", QuantizeOptions(chrf_budget_points=budget))

    assert verdict(59.2, 1.0)["recommended"]["ort-cpu"]["quality_change"] == "-0.80 chrF points"
    assert verdict(58.5, 1.0)["recommended"] == {}  # 1.5 points > 1
    assert verdict(58.5, 1.0, budget=2.0)["recommended"]  # --max-chrf-drop 2
    assert verdict(59.9, 2.5)["recommended"] == {}  # slower
    assert agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6, 7]]) == {
        "identical": 1,
        "of": 2,
        "prefix_tokens": 4,
        "of_tokens": 6,
    }


def test_optimum_and_transformers_js_names_link_to_the_graphs(quantized):
    model_dir, variants, _ = quantized
    folder = model_dir / "onnx"
    for name, suffixes in (
        ("int8", ("_quantized", "_int8")),
        ("int4", ("_q4",)),
        ("fp16", ("_fp16",)),
    ):
        for stem in STEMS:
            for suffix in suffixes:
                alias = folder / f"{stem}{suffix}.onnx"
                assert alias.name in variants[name]["aliases"]
                assert os.path.samefile(alias, folder / f"{stem}.{name}.onnx")
    assert manifest.read(model_dir)["variants"]["fp32"]["aliases"] == [
        "encoder_model.onnx",
        "decoder_with_past_model.onnx",
    ]
    optimum = pytest.importorskip("optimum.onnxruntime")
    theirs = optimum.ORTModelForSeq2SeqLM.from_pretrained(
        model_dir,
        subfolder="onnx",
        encoder_file_name="encoder_model_quantized.onnx",
        decoder_file_name="decoder_model_quantized.onnx",
        decoder_with_past_file_name="decoder_with_past_model_quantized.onnx",
    )
    ours = runtime.load(model_dir, backend="ort-cpu", variant="int8")
    ids = torch.tensor([ours.tokenizer.encode("4 0 9 6").ids])
    row = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8)
    row = row[0].tolist()[1:]  # after the decoder start token, up to </s>
    row = row[: row.index(2)] if 2 in row else row
    assert row == ours.generate("4 0 9 6", max_new_tokens=8).token_ids


def _copy(model_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst)
    return dst


def test_quantizing_again_replaces_the_variant(quantized, tmp_path):
    model_dir = _copy(quantized[0], tmp_path)
    before = sorted(p.name for p in (model_dir / "onnx").iterdir())
    old = manifest.read(model_dir)["variants"]["int8"]
    variants = quantize_model(model_dir, "int8", FAST, measure_all=False)
    assert sorted(p.name for p in (model_dir / "onnx").iterdir()) == before  # no strays
    assert variants["int8"]["graphs"]["encoder"]["sha256"] == old["graphs"]["encoder"]["sha256"]
    assert variants["int8"]["created"] >= old["created"]


def test_new_weights_drop_the_variants_and_all_their_files(quantized, tmp_path):
    model_dir = _copy(quantized[0], tmp_path)
    fp32 = manifest.read(model_dir)["variants"]["fp32"]
    manifest.add_variant(
        model_dir, "fp32", {**fp32, "source_weights_sha256": "0" * 64}, recording=("fp32",)
    )
    left = sorted(p.name for p in (model_dir / "onnx").iterdir() if p.name != "README.md")
    assert set(manifest.read(model_dir)["variants"]) == {"fp32"}
    assert not [f for f in left if any(k in f for k in ("int8", "int4", "fp16", "_q"))], left


def test_bad_input_gets_clear_errors_and_leaves_nothing(quantized, tmp_path, monkeypatch):
    model_dir = _copy(quantized[0], tmp_path)
    with pytest.raises(ConfigError, match="int8, int4, fp16"):
        quantize_model(model_dir, "int8-static", FAST)
    with pytest.raises(ConfigError, match="unknown variant 'int3'"):
        runtime.load(model_dir, backend="ort-cpu", variant="int3")
    before = sorted(p.name for p in (model_dir / "onnx").iterdir())

    def broken(src, dst, *a, **k):  # the decoder_with_past graph comes out as garbage
        if src.name.startswith("decoder_with_past"):
            dst.write_bytes(b"not an onnx graph")
            return {}
        return real(src, dst, *a, **k)

    real = graphs.weight_only
    monkeypatch.setattr(graphs, "weight_only", broken)
    with pytest.raises(ExportError, match="does not load"):
        quantize_model(model_dir, "int4", FAST, measure_all=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (model_dir / "onnx").iterdir()) == before
    enc = model_dir / "onnx" / "encoder_model.onnx"
    enc.write_bytes(enc.read_bytes()[:200])  # a truncated fp32 graph
    with pytest.raises(ExportError, match="encoder"):
        quantize_model(model_dir, "fp16", FAST, measure_all=False)
    data = json.loads((model_dir / "onnx" / "manifest.json").read_text())
    data["variants"]["int8"]["graphs"]["encoder"]["file"] = "../../escape.onnx"
    (model_dir / "onnx" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a file name inside onnx"):
        runtime.load(model_dir, backend="ort-cpu", variant="int8")
