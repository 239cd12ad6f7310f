"""Exports past protobuf's 2 GB limit: a model with just over 2 GB of fp32 weights.

Random init, one layer, a wide embedding (131,072 × 4,096, tied with the LM head) so the
test stays fast: the point is the size of the graphs, not their depth. Every graph must
keep its weights in ``<name>.data`` and load in the runtime; a machine without the memory
an export needs is told so before anything starts.
"""

from __future__ import annotations

import onnx
import pytest
from conftest import make_model_dir

from edgezoo import manifest, runtime
from edgezoo.errors import ResourceError
from edgezoo.export import onnx_export
from edgezoo.export.onnx_export import to_onnx
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.modeldir import fp32_weight_bytes

pytestmark = pytest.mark.slow

BIG = LlamaConfig(
    vocab_size=131_072,
    hidden_size=4_096,
    intermediate_size=512,
    num_hidden_layers=1,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("big-lm")
    make_model_dir(path, BIG, tokenizer)
    return path


def test_a_model_over_2_gb_exports_with_external_weights_and_runs(big_dir):
    assert fp32_weight_bytes(big_dir) > 2**31  # past protobuf's limit
    result = to_onnx(big_dir, greedy_steps=8)
    assert set(result.variants) == {"fp32", "opt", "gqa"}, result.notes
    for name, entry in result.variants.items():
        graph_file = big_dir / "onnx" / entry["file"]
        assert graph_file.stat().st_size < 50_000_000, name  # the graph; weights are apart
        assert entry["bytes"] > 2**31 and entry["max_abs_diff"] <= 1e-4, name
        assert entry["greedy_steps"] == 8, name
        graph = onnx.load(str(graph_file), load_external_data=False).graph
        assert not [t.name for t in graph.initializer if len(t.raw_data) > 65536], name
    for variant in ("gqa", "fp32"):
        lm = runtime.load(big_dir, backend="ort-cpu", variant=variant)
        out = lm.generate("def f(", max_new_tokens=4, ignore_eos=True)
        assert len(out.token_ids) == 4 and out.finish_reason == "length"
    assert manifest.read(big_dir)["variants"]["gqa"]["file"] == "model.gqa.onnx"


def test_an_export_that_does_not_fit_stops_before_it_starts(big_dir, monkeypatch):
    before = sorted(p.name for p in (big_dir / "onnx").iterdir())
    monkeypatch.setattr(onnx_export, "ensure_available", _only(4_000_000_000))
    with pytest.raises(ResourceError, match=r"needs about \d+\.\d GB of free memory"):
        to_onnx(big_dir)
    assert sorted(p.name for p in (big_dir / "onnx").iterdir()) == before


def _only(available: int):
    from edgezoo.memory import ensure_available

    return lambda need, what: ensure_available(need, what, available=available)
