"""Load test, loopback only and bounded: 64 clients for 20 s against a real uvicorn server."""

from __future__ import annotations

import resource

import pytest
from conftest import make_model_dir, tiny_llama

from edgezoo import runtime
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.load_test import hammer, running_server
from edgezoo.runtime.server import create_app

pytestmark = pytest.mark.slow


def test_64_clients_for_20_seconds(tmp_path, tokenizer):
    make_model_dir(tmp_path, tiny_llama(max_position_embeddings=96), tokenizer)
    to_onnx(tmp_path, greedy_steps=8, optimize=False)
    app = create_app(
        runtime.load(tmp_path, backend="ort-cpu", threads=1),
        model_name="tiny",
        max_queue=32,
        max_batch=8,
    )
    body = {"model": "tiny", "prompt": "def main():", "max_tokens": 8, "temperature": 0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with running_server(app) as url:
        result = hammer(url, clients=64, seconds=20, body=body)
        # Streams batch too: every one must still end with its finish reason and usage.
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        streams = hammer(url, clients=16, seconds=5, body=stream_body)
        import httpx

        assert httpx.get(f"{url}/health").status_code == 200  # still serving afterwards
    summary = result.summary()
    assert not result.errors, result.errors[:3]  # no crash, no reset connection
    assert set(result.statuses) <= {200, 429, 503}, summary  # only explicit back-pressure
    assert result.ok > 100 and result.incomplete == 0, summary  # accepted requests answered in full
    assert not streams.errors and streams.ok > 10 and streams.incomplete == 0, streams.summary()
    assert set(streams.statuses) <= {200, 429, 503}, streams.summary()
    assert streams.ok <= streams.completion_tokens <= 8 * streams.ok  # usage came with each
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 500, f"peak RSS grew by {grown_mb:.0f} MB"
