"""TensorRT engine caches are keyed by the graph's real hash (no GPU needed to check)."""

from __future__ import annotations

import numpy as np
import pytest

from edgezoo import manifest
from edgezoo.errors import ConfigError
from edgezoo.onnx_files import file_facts, save_onnx
from edgezoo.runtime import backends
from edgezoo.runtime.model_files import engine_cache_key, locate
from edgezoo.runtime.tensorrt_engine import engine_path


def _graph(folder, weight: float):
    """A one-op graph whose 4 KB weight goes to ``model.onnx.data``: graphs built with
    different weights have byte-identical ``.onnx`` files and differ only in their data."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full(1024, weight, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])],
        [w],
    )
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    path = folder / "model.onnx"
    save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_bare_graphs_with_different_weights_get_different_engine_caches(tmp_path):
    a, b = _graph(tmp_path / "a", 1.0), _graph(tmp_path / "b", 2.0)
    assert a.read_bytes() == b.read_bytes()  # only the weights differ
    keys = {p: locate(p, "ort-trt").entry["sha256"] for p in (a, b)}
    assert keys[a] == file_facts(a)["sha256"] and keys[b] == file_facts(b)["sha256"]
    assert keys[a] != keys[b]
    assert locate(a, "tensorrt").entry["sha256"] == keys[a]
    assert backends.trt_cache_dir(keys[a], "10.0") != backends.trt_cache_dir(keys[b], "10.0")
    assert engine_path(keys[a], True, 4) != engine_path(keys[b], True, 4)
    assert "sha256" not in locate(a, "ort-cpu").entry  # other backends do not hash the file


def test_manifest_hash_is_used_and_an_empty_one_refused(tmp_path):
    path = _graph(tmp_path / "m", 1.0)
    manifest.add_variant(path.parent, "fp32", {"file": "model.onnx", "sha256": "ab" * 32})
    assert engine_cache_key(path, {"sha256": "ab" * 32}) == "ab" * 32
    assert locate(path, "ort-trt").entry["sha256"] == "ab" * 32
    assert engine_cache_key(path, {}) == file_facts(path)["sha256"]
    with pytest.raises(ConfigError, match="sha256"):
        backends.trt_cache_dir("", "10.0")
