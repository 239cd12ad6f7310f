"""After quantize, `load()`, `generate` and `serve` use the gate's pick without a flag."""

from __future__ import annotations

import argparse

import pytest
from conftest import make_model_dir, tiny_llama

from edgezoo import manifest, runtime
from edgezoo.cli import build_parser, main
from edgezoo.runtime import cli as runtime_cli

GATE = {"ort-cpu": {"speedup": 1.5, "quality_change": "+0.10% perplexity"}}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.quantize.pipeline import quantize_model

    path = tmp_path_factory.mktemp("auto-lm")
    make_model_dir(path, tiny_llama(), tokenizer)
    to_onnx(path, greedy_steps=0, fast=False, optimize=False)
    quantize_model(path, "int8", measure_all=False)
    return path


def _recommend(path, gate):
    data = manifest.read(path)
    data["variants"]["int8"]["recommended"] = gate
    manifest.write(path, data)


def test_load_defaults_to_the_variant_the_gate_recommends(lm_dir):
    _recommend(lm_dir, {})
    plain = runtime.load(lm_dir, backend="ort-cpu")
    assert plain.variant == "fp32" and "auto" in plain.reason
    _recommend(lm_dir, GATE)
    lm = runtime.load(lm_dir, backend="ort-cpu")
    assert lm.variant == "int8" and "recommended" in lm.reason
    assert runtime.load(lm_dir, backend="ort-cpu", variant="fp32").variant == "fp32"


def test_generate_and_serve_say_which_variant_they_took(lm_dir, capsys):
    _recommend(lm_dir, GATE)
    for name in ("generate", "classify", "serve"):
        assert (
            build_parser()
            .parse_args([name, str(lm_dir), "x"][: 3 if name == "generate" else 2])
            .variant
            == "auto"
        )
    argv = ["generate", str(lm_dir), "def f(", "--max-new-tokens", "2", "--backend", "ort-cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "using variant int8 on ort-cpu (recommended by the quality gate: 1.50× fp32 speed, "
        "+0.10% perplexity)" in err
    )
    args = argparse.Namespace(model_dir=str(lm_dir), backend="ort-cpu", variant="auto")
    runtime_cli._announce_variant(args)  # what `edgezoo serve` prints before it loads
    assert (
        "using variant int8 on ort-cpu (recommended by the quality gate" in capsys.readouterr().err
    )
    _recommend(lm_dir, {})
    assert main(argv) == 0
    assert (
        "using variant fp32 on ort-cpu (auto: no quantized variant passed"
        in capsys.readouterr().err
    )
    assert main([*argv, "--variant", "int8"]) == 0
    assert "using variant int8 on ort-cpu (--variant int8)" in capsys.readouterr().err
