"""s2s export: Optimum's three-graph layout, validated, run by the torch-free runtime."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import S2S_SOURCES

from edgezoo import io_names, manifest, runtime
from edgezoo.runtime.language_model import Generation
from edgezoo.runtime.seq2seq import Seq2SeqModel
from edgezoo.zoo.modeldir import load_model

SOURCES = S2S_SOURCES


@pytest.fixture(scope="module")
def exported(s2s_exported):
    """The session's tiny exported T5 (conftest), shared with the other s2s modules."""
    return s2s_exported


def test_export_writes_optimum_layout_and_records_it(exported):
    folder, result = exported
    entry = manifest.read(folder)["variants"]["fp32"]
    assert result.variants["fp32"]["file"] == io_names.DECODER_FILE
    assert entry["max_abs_diff"] <= 1e-4 and entry["greedy_steps"] >= 8
    for role, name in (("encoder", "encoder_model.onnx"), ("decoder", "decoder_model.onnx")):
        assert entry["graphs"][role]["file"] == name and (folder / "onnx" / name).is_file()
    past = entry["graphs"]["decoder_with_past"]
    assert [i["name"] for i in past["inputs"]][:4] == [
        "encoder_attention_mask",
        "input_ids",
        "past_key_values.0.decoder.key",
        "past_key_values.0.decoder.value",
    ]
    assert [o["name"] for o in past["outputs"]] == [
        "logits",
        *[f"present.{i}.decoder.{k}" for i in range(2) for k in ("key", "value")],
    ]
    assert json.loads((folder / "onnx" / "manifest.json").read_text())["family"] == "s2s"


def test_runtime_generates_pytorchs_greedy_tokens(exported):
    folder, _ = exported
    model = runtime.load(folder, backend="ort-cpu")
    assert isinstance(model, Seq2SeqModel)
    results = model.generate(SOURCES, max_new_tokens=12)
    single = model.generate(SOURCES[1], max_new_tokens=12)
    assert isinstance(single, Generation) and single.token_ids == results[1].token_ids
    torch_model = load_model(folder)
    tok = model.tokenizer
    for source, got in zip(SOURCES, results, strict=True):
        ids = torch.tensor([tok.encode(source).ids])
        assert torch_model.generate_greedy(ids, None, 12)[0] == got.token_ids
        assert got.finish_reason in ("eos", "length") and got.prompt_tokens == ids.shape[1]
        assert got.text == tok.decode(got.token_ids)


def test_optimum_runs_our_export(exported):
    optimum = pytest.importorskip("optimum.onnxruntime")
    folder, _ = exported
    ort_model = optimum.ORTModelForSeq2SeqLM.from_pretrained(folder, subfolder="onnx")
    ids = torch.randint(4, 320, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    theirs = ort_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    ours = load_model(folder).generate_greedy(ids, mask, 8)
    for row, hf_row in zip(ours, theirs.tolist(), strict=True):
        hf_row = hf_row[1:]  # the decoder start token
        assert row == (hf_row[: hf_row.index(2)] if 2 in hf_row else hf_row)


def test_edgezoo_generate_prints_the_target_and_sampling_is_seeded(exported, capsys):
    from edgezoo.cli import main

    folder, _ = exported
    assert main(["generate", str(folder), SOURCES[0], "--max-new-tokens", "5"]) == 0
    model = runtime.load(folder, backend="ort-cpu")
    assert (
        capsys.readouterr().out.strip() == model.generate(SOURCES[0], max_new_tokens=5).text.strip()
    )
    a, b = (model.generate(SOURCES, max_new_tokens=6, temperature=1.0, seed=3) for _ in range(2))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    penalised = model.generate(SOURCES[0], max_new_tokens=12, repetition_penalty=5.0)
    assert len(set(penalised.token_ids)) == len(penalised.token_ids)  # no token twice


def test_quantize_refuses_calibrated_int8_for_an_s2s_export_clearly(exported):
    """int8 / int4 / fp16 of s2s exports: tests/test_s2s_quantize.py."""
    from edgezoo.errors import ConfigError
    from edgezoo.quantize.pipeline import quantize_model

    folder, _ = exported
    with pytest.raises(ConfigError, match="encoder-decoder"):
        quantize_model(folder, "int8-static")
