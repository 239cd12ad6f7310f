"""Corrupt files a user hands us get one clear error line, never a traceback from inside."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import lm_train_config, make_model_dir, tiny_llama

from edgezoo import runtime
from edgezoo.errors import EdgeZooError
from edgezoo.export.onnx_export import to_onnx

BROKEN_CONFIGS = {
    "not-json": '{"model_type": "llama", "hidden_size": 6',
    "array": "[1, 2, 3]",
    "no-model-type": "{}",
    "missing-field": json.dumps({"model_type": "llama", "vocab_size": 600}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("bad-files") / "lm"
    make_model_dir(path, tiny_llama(), tokenizer)
    to_onnx(path, greedy_steps=4, fast=False, optimize=False)
    return path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgezoo.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("kind", list(BROKEN_CONFIGS))
def test_corrupt_config_json_is_one_error_in_runtime_and_export(exported, tmp_path, kind):
    model = _copy(exported, tmp_path / "lm")
    (model / "config.json").write_text(BROKEN_CONFIGS[kind])
    if kind != "missing-field":  # the runtime needs only model_type; export needs all
        with pytest.raises(EdgeZooError, match=r"config\.json"):
            runtime.load(model, backend="ort-cpu")
    with pytest.raises(EdgeZooError, match=r"config\.json"):
        to_onnx(model, greedy_steps=4, fast=False, optimize=False)


def test_corrupt_config_json_through_the_cli(exported, tmp_path):
    model = _copy(exported, tmp_path / "lm")
    (model / "config.json").write_text("[]")
    done = _cli("generate", str(model), "def f(", "--backend", "ort-cpu")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("edgezoo: error:") and "config.json" in done.stderr
    assert "Traceback" not in done.stderr


def test_truncated_onnx_is_a_clear_error(exported, tmp_path):
    model = _copy(exported, tmp_path / "lm")
    graph = model / "onnx" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(EdgeZooError, match="truncated or corrupt"):
        runtime.load(model, backend="ort-cpu")  # the manifest's variant
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(model / name, bare / name)
    shutil.copy(graph, bare / "model.onnx")  # no manifest: the graph itself is inspected
    with pytest.raises(EdgeZooError, match="truncated or corrupt"):
        runtime.load(bare / "model.onnx", backend="ort-cpu")
    done = _cli("generate", str(bare / "model.onnx"), "def f(", "--backend", "ort-cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("{not json", "not valid JSON"),
        ('"llama"', "JSON string, not an object"),
        (json.dumps({"architectures": ["LlamaForCausalLM"]}), "lacks 'model_type'"),
        (json.dumps({"model_type": "llama", "vocab_size": 600}), "lacks 'hidden_size'"),
    ],
)
def test_export_from_hf_with_a_bad_config(tmp_path, tokenizer, config, match):
    from edgezoo.export.hf_import import import_hf

    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(config)
    tokenizer.save(str(src / "tokenizer.json"))
    with pytest.raises(EdgeZooError, match=match):
        import_hf(src, tmp_path / "out")
    done = _cli("export", str(tmp_path / "out2"), "--from-hf", str(src))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert match in done.stderr


def test_corrupt_run_json_on_resume_is_one_error(text_corpus, tmp_path):
    from edgezoo.zoo.train import train

    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=4, checkpoint_every=2))
    (run / "run.json").write_text('{"family": "lm", "si')
    with pytest.raises(EdgeZooError, match=r"run\.json is not valid JSON"):
        train(lm_train_config(text_corpus, run, steps=8, resume=True))


@pytest.mark.parametrize("value", ["-3", "0", "many"])
def test_calibration_samples_are_checked_while_parsing(capsys, value):
    from edgezoo.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["quantize", "m", "--to", "int8", "--calibration-samples", value])
    assert stop.value.code == 2
    assert "--calibration-samples" in capsys.readouterr().err


def test_external_weights_outside_the_model_dir_are_refused(exported, tmp_path):
    """A graph whose weights point at ``../../<file>`` must not read that file: onnxruntime
    >= 1.24 confines external data to the graph's folder (the pyproject minimum)."""
    import onnx

    model = _copy(exported, tmp_path / "lm")
    graph = model / "onnx" / "model.onnx"
    proto = onnx.load(graph, load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.external_data)
    info = {e.key: e.value for e in tensor.external_data}
    secret = tmp_path / "secret.bin"
    data = (model / "onnx" / info["location"]).read_bytes()
    secret.write_bytes(data)  # the same bytes: only the path is wrong
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../../secret.bin"
    graph.write_bytes(proto.SerializeToString())
    with pytest.raises(EdgeZooError, match="escapes"):
        runtime.load(model, backend="ort-cpu")
