"""Export: validated ONNX graphs with the Optimum I/O layout, manifest, failures, HF import."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_model_dir, tiny_llama

from edgezoo import atomic, manifest
from edgezoo.errors import CheckpointError, ExportError
from edgezoo.export import validate
from edgezoo.export.onnx_export import to_onnx
from edgezoo.export.wrappers import DecoderForExport, decoder_inputs
from edgezoo.zoo.config import BertConfig, LlamaConfig

TINY_LM = vars(tiny_llama()).copy()
TINY_LM.pop("preset")


@pytest.fixture(scope="session")
def exported_lm(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("lm")
    model = make_model_dir(path, LlamaConfig(**TINY_LM), tokenizer)
    return path, model, to_onnx(path)


def test_decoder_export_writes_validated_variants_and_manifest(exported_lm):
    path, _, _ = exported_lm
    info = manifest.read(path)
    assert set(info["variants"]) == {"fp32", "opt", "gqa"}
    assert info["family"] == "lm" and info["model_type"] == "llama"
    for name, entry in info["variants"].items():
        file = path / "onnx" / entry["file"]
        weights = file.with_name(file.name + ".data")  # every graph keeps its weights apart
        graph = onnx.load(str(file), load_external_data=False).graph
        inline = [t.name for t in graph.initializer if len(t.raw_data) > 65536]
        assert weights.is_file() and not inline, (name, inline)
        both = hashlib.sha256(file.read_bytes() + weights.read_bytes()).hexdigest()
        assert entry["sha256"] == both
        assert entry["bytes"] == file.stat().st_size + weights.stat().st_size
        assert entry["max_abs_diff"] <= 1e-4, name
        assert entry["greedy_steps"] == 64, name
        assert entry["source_weights_sha256"] == atomic.sha256_file(path / "model.safetensors")
    portable = info["variants"]["fp32"]
    names = [i["name"] for i in portable["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o["name"] for o in portable["outputs"]][:2] == ["logits", "present.0.key"]
    assert portable["inputs"][3]["shape"] == ["batch", 2, "past_sequence_length", 16]
    assert portable["opset"] == 18
    assert (
        "ort-trt" in portable["backends"] and "ort-trt" not in info["variants"]["gqa"]["backends"]
    )
    assert not [p for p in (path / "onnx").iterdir() if p.name.startswith(".")]


@torch.no_grad()
@pytest.mark.parametrize("variant", ["fp32", "opt"])
def test_portable_graph_is_dynamic_at_untraced_shapes(exported_lm, variant):
    path, model, _ = exported_lm
    sess = ort.InferenceSession(
        str(manifest.variant_file(path, variant)), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in sess.get_inputs()]
    wrapper = DecoderForExport(model)
    for batch, seq, past in [(5, 11, 0), (1, 2, 60), (4, 1, 1)]:
        inputs = decoder_inputs(
            model.config, batch, seq, past, torch.Generator().manual_seed(batch), vocab=600
        )
        got = sess.run(None, dict(zip(names, (t.numpy() for t in inputs), strict=True)))
        expected = wrapper(*inputs)
        assert max(np.abs(g - e.numpy()).max() for g, e in zip(got, expected, strict=True)) <= 1e-4


def test_gqa_graph_is_compact(exported_lm):
    import onnx

    path, _, _ = exported_lm
    graph = onnx.load(str(manifest.variant_file(path, "gqa"))).graph
    ops = [n.op_type for n in graph.node]
    assert (
        ops.count("GroupQueryAttention") == 2 and ops.count("SkipSimplifiedLayerNormalization") == 4
    )
    assert len(ops) < 16 * 2 + 16  # ~12 per layer plus a few shared nodes


def test_gqa_graph_computes_logits_from_the_position_asked(exported_lm):
    """``logits_from`` (default 0: every position, as validation compares) trims the LM
    head to the positions a caller needs: a prompt only its last (-1)."""
    from edgezoo import io_names

    path, _, _ = exported_lm
    sess = ort.InferenceSession(
        str(manifest.variant_file(path, "gqa")), providers=["CPUExecutionProvider"]
    )
    assert io_names.LOGITS_FROM in {i.name for i in sess.get_overridable_initializers()}
    feeds = {
        io_names.INPUT_IDS: np.array([[5, 17, 42, 7, 99, 3]], np.int64),
        io_names.ATTENTION_MASK: np.ones((1, 6), np.int64),
    }
    for i in sess.get_inputs():
        if io_names.is_past(i.name):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    every = sess.run([io_names.LOGITS], feeds)[0]
    assert every.shape[:2] == (1, 6)
    for start, positions in ((2, slice(2, None)), (5, slice(5, None)), (-1, slice(-1, None))):
        feeds[io_names.LOGITS_FROM] = np.array([start], np.int64)
        got = sess.run([io_names.LOGITS], feeds)[0]
        np.testing.assert_allclose(got, every[:, positions], rtol=0, atol=1e-5)


def test_encoder_export(tmp_path, tokenizer):
    cfg = BertConfig(
        vocab_size=600,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        num_labels=3,
    )
    make_model_dir(tmp_path, cfg, tokenizer)
    result = to_onnx(tmp_path)
    assert set(result.variants) == {"fp32", "opt"}
    entry = result.variants["fp32"]
    assert [i["name"] for i in entry["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert entry["outputs"][0]["shape"] == ["batch", 3]
    assert entry["max_abs_diff"] <= 1e-4
    assert result.variants["opt"]["fusions"].get("SkipLayerNormalization", 0) >= 2
    for variant in result.variants.values():  # sentence embeddings read the hidden states
        assert [o["name"] for o in variant["outputs"]] == ["logits", "last_hidden_state"]
        assert variant["max_abs_diff_by_output"]["last_hidden_state"] <= 1e-4


def test_failed_validation_keeps_the_previous_export(exported_lm, monkeypatch):
    path, _, _ = exported_lm
    before = {p.name: atomic.sha256_file(p) for p in (path / "onnx").iterdir()}

    def fail(*_a, **_k):
        raise ExportError("ONNX output differs from PyTorch by 1e-2")

    monkeypatch.setattr(validate, "compare_outputs", fail)
    with pytest.raises(ExportError, match="differs"):
        to_onnx(path, fast=False, optimize=False)
    assert {p.name: atomic.sha256_file(p) for p in (path / "onnx").iterdir()} == before


def test_export_of_a_broken_model_dir_says_what_is_wrong(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        to_onnx(tmp_path)
    make_model_dir(tmp_path, LlamaConfig(**TINY_LM), tokenizer)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        to_onnx(tmp_path)
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_odd_head_dim_skips_only_the_gqa_graph(tmp_path, tokenizer):
    cfg = LlamaConfig(**{**TINY_LM, "hidden_size": 96, "num_attention_heads": 4})  # head_dim 24
    make_model_dir(tmp_path, cfg, tokenizer)
    result = to_onnx(tmp_path, optimize=False, greedy_steps=8)
    assert set(result.variants) == {"fp32"}
    assert "multiple of 16" in " ".join(result.notes)


def test_ort_format_conversion(exported_lm):
    from edgezoo.export.ort_format import to_ort_format

    path, _, _ = exported_lm
    entry = to_ort_format(path, "fp32")
    sess = ort.InferenceSession(
        str(path / "onnx" / entry["file"]), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in sess.get_inputs()][:2] == ["input_ids", "attention_mask"]
    assert manifest.read(path)["variants"]["fp32-ort"]["format"] == "ort"


def test_import_local_hf_checkpoints(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    from edgezoo.export.hf_import import import_hf

    llama_src = tmp_path / "hf-llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LM)).save_pretrained(llama_src)
    tokenizer.save(str(llama_src / "tokenizer.json"))
    result = import_hf(llama_src, tmp_path / "llama", optimize=False, greedy_steps=16)
    assert {"fp32", "gqa"} <= set(result.variants)
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["model_type"] == "llama"

    gpt2_src = tmp_path / "hf-gpt2"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=600, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    ).save_pretrained(gpt2_src)
    tokenizer.save(str(gpt2_src / "tokenizer.json"))
    result = import_hf(gpt2_src, tmp_path / "gpt2")
    entry = result.variants["fp32"]
    assert entry["max_abs_diff"] <= 1e-4 and "optimum" in entry["exporter"]
    names = {i["name"] for i in entry["inputs"]}
    assert {"input_ids", "attention_mask", "past_key_values.0.key"} <= names
    assert (tmp_path / "gpt2" / "tokenizer.json").is_file()

    (gpt2_src / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        import_hf(gpt2_src, tmp_path / "again")


def test_exporter_failure_and_unwritable_dir_are_clear(tmp_path, tokenizer, monkeypatch):
    import torch
    from conftest import tiny_llama

    make_model_dir(tmp_path, tiny_llama(), tokenizer)

    def broken(*_a, **_k):
        raise RuntimeError("Unsupported: aten::frobnicate in node model.layers.0.self_attn")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match="aten::frobnicate"):
        to_onnx(tmp_path)
    assert not (tmp_path / "onnx" / "model.onnx").exists()
    monkeypatch.undo()
    import os

    if os.geteuid() != 0:  # root writes anywhere: the permission check cannot be exercised as root
        (tmp_path / "onnx").chmod(0o500)
        with pytest.raises(ExportError, match="not writable"):
            to_onnx(tmp_path)


def test_unsupported_architecture_names_what_is_supported(tmp_path, tokenizer):
    import json

    from edgezoo.export.hf_import import import_hf

    src = tmp_path / "weird"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"model_type": "frobnicator", "architectures": ["FrobnicatorForCausalLM"]})
    )
    tokenizer.save(str(src / "tokenizer.json"))
    with pytest.raises(ExportError, match="Supported: the zoo families"):
        import_hf(src, tmp_path / "out")


def test_source_commit_only_from_edgezoos_own_checkout(tmp_path):
    from edgezoo.export.provenance import PACKAGE_ROOT, source_commit

    if (PACKAGE_ROOT / ".git").exists():  # running from the checkout (the tests always do)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True
        ).stdout.strip()
        assert source_commit() == head
    # An install inside someone else's repository must not record their commit.
    other = tmp_path / "their-project"
    site = other / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "their-app"\n')
    for cmd in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", *cmd], cwd=other, check=True, capture_output=True)
    assert source_commit(site) is None
    assert source_commit(other) is None  # their top level, but not edgezoo's pyproject
    assert source_commit(tmp_path / "not-a-repo") is None


def test_large_untied_head_is_written_in_pieces_that_quantizers_join(
    tmp_path, tokenizer, monkeypatch
):
    """A head over ``HEAD_CHUNK_BYTES`` becomes column slices + Concat (less peak memory at
    load); the graph still validates against PyTorch, and quantizing joins the slices into
    one head again (one int8 / int4 MatMulNBits and one MatMulInteger produce the logits)."""
    from edgezoo.export import gqa_graph
    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model

    cfg = LlamaConfig(**{**TINY_LM, "tie_word_embeddings": False})
    make_model_dir(tmp_path, cfg, tokenizer)
    head_bytes = cfg.hidden_size * cfg.vocab_size * 4
    monkeypatch.setattr(gqa_graph, "HEAD_CHUNK_BYTES", head_bytes // 3 + 1)
    result = to_onnx(tmp_path, optimize=False, greedy_steps=8)
    assert "gqa" in result.variants  # validated: logits within tolerance of PyTorch
    graph = onnx.load(str(tmp_path / "onnx" / "model.gqa.onnx"), load_external_data=False).graph
    (concat,) = [n for n in graph.node if "logits" in n.output]
    assert concat.op_type == "Concat" and len(concat.input) == 3
    widths = sorted(i.dims[1] for i in graph.initializer if i.name.startswith("lm_head.weight."))
    assert sum(widths) == cfg.vocab_size and len(widths) == 3
    for target in ("int8", "int4"):
        quantize_model(tmp_path, target, QuantizeOptions(head_bits=8), measure_all=False)
    variants = manifest.read(tmp_path)["variants"]
    for name, op in (("gqa-int8", "MatMulNBits"), ("gqa-int4", "MatMulNBits")):
        g = onnx.load(str(tmp_path / "onnx" / variants[name]["file"]), load_external_data=False)
        (head,) = [n for n in g.graph.node if "logits" in n.output]
        assert head.op_type == op and "Concat" not in {n.op_type for n in g.graph.node}
    assert variants["gqa-int4"]["quantization"]["lm_head_bits"] == 8
    dynamic = onnx.load(
        str(tmp_path / "onnx" / variants["gqa-int8-dynamic"]["file"]), load_external_data=False
    )
    ops = [n.op_type for n in dynamic.graph.node]
    assert "MatMul" not in ops and "Concat" not in ops
