"""HTTP server: OpenAI-compatible answers equal the Python API, batching, limits, auth, metrics.

All traffic goes through fastapi's in-process TestClient (or straight ASGI calls): nothing
touches the network. Slow or gated models are thin wrappers around the real tiny LM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import make_model_dir, tiny_bert, tiny_llama
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from edgezoo import runtime
from edgezoo.errors import ConfigError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.batcher import Batcher, Job
from edgezoo.runtime.cli import register as register_runtime_commands
from edgezoo.runtime.language_model import StreamDelta
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.server import check_bind, create_app, is_loopback, serve
from edgezoo.runtime.server_metrics import Metrics

CONTEXT = 96
GREEDY = {"temperature": 0, "max_tokens": 12}
PROMPTS = ["def main(args):\n    return", "import os", 'class Config(object):\n    """Hold']


def local_client(app, **kwargs) -> TestClient:
    """A TestClient that addresses the app as ``localhost``: a keyless server answers only
    loopback Host names (TestClient's default is ``testserver``)."""
    return TestClient(app, base_url="http://localhost", **kwargs)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("srv-lm")
    make_model_dir(path, tiny_llama(max_position_embeddings=CONTEXT), tokenizer)
    to_onnx(path, greedy_steps=16, fast=False, optimize=False)
    return path


@pytest.fixture(scope="module")
def lm(lm_dir):
    return runtime.load(lm_dir, backend="ort-cpu")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("srv-cls")
    cfg = tiny_bert(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=CONTEXT,
        id2label={0: "a", 1: "b", 2: "c"},
    )
    make_model_dir(path, cfg, tokenizer)
    to_onnx(path, fast=False, optimize=False)
    return runtime.load(path, backend="ort-cpu")


@pytest.fixture(scope="module")
def client(lm):
    with local_client(create_app(lm, model_name="tiny", max_tokens_limit=64)) as c:
        yield c


def expected(lm, prompt: str, max_tokens: int = 12):
    return lm.generate(prompt, max_new_tokens=max_tokens)


class Gated:
    """The real LM, but ``generate`` records each batch and can be held until released."""

    def __init__(self, lm, *, held: bool = False) -> None:
        self.lm, self.batches = lm, []
        self.started, self.release = threading.Event(), threading.Event()
        if not held:
            self.release.set()

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def generate_ids(self, prompts, params=None, **overrides):
        self.batches.append(len(prompts))
        self.started.set()
        assert self.release.wait(10)
        return self.lm.generate_ids(prompts, params, **overrides)


# ---------------------------------------------------------------------- completions ----------


def test_greedy_completion_matches_generate(client, lm):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPTS[0], **GREEDY})
    assert r.status_code == 200, r.text
    body, want = r.json(), expected(lm, PROMPTS[0])
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"] == [
        {"text": want.text, "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {
        "prompt_tokens": want.prompt_tokens,
        "completion_tokens": len(want.token_ids),
        "total_tokens": want.prompt_tokens + len(want.token_ids),
    }


def test_list_prompt_gives_one_choice_per_prompt(client, lm):
    r = client.post("/v1/completions", json={"prompt": PROMPTS, **GREEDY})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["text"] for c in choices] == [expected(lm, p).text for p in PROMPTS]


def test_stop_string_cuts_the_text(client, lm):
    want = expected(lm, PROMPTS[1], 24).text
    stop = want[len(want) // 2 : len(want) // 2 + 2]
    r = client.post(
        "/v1/completions", json={"prompt": PROMPTS[1], "stop": stop, **GREEDY, "max_tokens": 24}
    )
    choice = r.json()["choices"][0]
    assert choice["text"] == want[: want.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_streaming_chunks_join_to_the_same_text(client, lm):
    body = {
        "prompt": PROMPTS[2],
        "stream": True,
        "stream_options": {"include_usage": True},
        **GREEDY,
    }
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert all(e for e in raw.split("\n\n")[:-1]) and raw.endswith("data: [DONE]\n\n")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *text_chunks, usage = chunks
    want = expected(lm, PROMPTS[2])
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == want.text
    assert [c["choices"][0]["finish_reason"] for c in text_chunks][-1] == "length"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(want.token_ids)


def test_streaming_a_list_of_prompts_indexes_the_chunks(client, lm):
    body = {"prompt": PROMPTS[:2], "stream": True, **GREEDY}
    events = client.post("/v1/completions", json=body).text.split("\n\n")
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e and e != "data: [DONE]"]
    for index, prompt in enumerate(PROMPTS[:2]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == expected(lm, prompt).text
        assert mine[-1]["finish_reason"] == "length"


def test_concurrent_streams_are_batched_and_each_gets_its_own_text(lm):
    class HeldStreams(Gated):
        def stream_batch_ids(self, prompts, params=None, **overrides):
            self.batches.append(len(prompts))
            self.started.set()
            assert self.release.wait(10)
            yield from self.lm.stream_batch_ids(prompts, params, **overrides)

    model = HeldStreams(lm, held=True)
    texts: dict[int, str] = {}

    def stream(i: int, c: TestClient) -> None:
        body = {"prompt": PROMPTS[i], "stream": True, **GREEDY}
        events = c.post("/v1/completions", json=body).text.split("\n\n")
        chunks = [json.loads(e.removeprefix("data: ")) for e in events if e and "[DONE]" not in e]
        texts[i] = "".join(ch["choices"][0]["text"] for ch in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    with local_client(create_app(model, model_name="tiny", batch_wait_ms=50)) as c:
        first = threading.Thread(target=stream, args=(0, c))
        first.start()
        assert model.started.wait(10)  # the first stream holds the worker ...
        others = [threading.Thread(target=stream, args=(i, c)) for i in (1, 2)]
        for t in others:
            t.start()
        deadline = time.time() + 10
        while len(c.app.state.batcher.pending) < 2:
            assert time.time() < deadline, "the two streams never queued"
            time.sleep(0.01)
        model.release.set()  # ... and the two queued behind it run as one batch
        for t in [first, *others]:
            t.join(30)
            assert not t.is_alive()
    assert model.batches == [1, 2]
    assert texts == {i: expected(lm, PROMPTS[i]).text for i in range(3)}


def test_a_stream_with_more_prompts_than_max_batch_runs_in_chunks(lm):
    with local_client(create_app(lm, model_name="tiny", max_batch=2, max_prompts=3)) as c:
        body = {"prompt": PROMPTS, "stream": True, **GREEDY}
        events = c.post("/v1/completions", json=body).text.split("\n\n")
        metrics = c.get("/metrics").text
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e and e != "data: [DONE]"]
    for index, prompt in enumerate(PROMPTS):
        mine = [ch["choices"][0] for ch in chunks if ch["choices"][0]["index"] == index]
        assert "".join(ch["text"] for ch in mine) == expected(lm, prompt).text
        assert mine[-1]["finish_reason"] == "length"
    assert "edgezoo_batch_size_count 2.0" in metrics  # rows 0-1, then row 2


def test_seeded_sampling_is_repeatable_and_never_batched(lm):
    model = Gated(lm)
    body = {"prompt": PROMPTS[0], "temperature": 1.5, "seed": 7, "max_tokens": 12}
    with local_client(create_app(model, model_name="tiny", batch_wait_ms=500)) as c:
        texts = []
        threads = [
            threading.Thread(
                target=lambda: texts.append(c.post("/v1/completions", json=body).json())
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    want = lm.generate(PROMPTS[0], temperature=1.5, seed=7, max_new_tokens=12).text
    assert [t["choices"][0]["text"] for t in texts] == [want] * 3
    assert model.batches == [1, 1, 1]


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        ("tiny", "model", "edgezoo")
    ]
    assert body["data"][0]["context_length"] == CONTEXT


def test_classify_returns_labels_and_scores(classifier):
    texts = ["import os\nos.getcwd()", "def f(x):\n    return x"]
    with local_client(create_app(classifier, model_name="cls")) as c:
        r = c.post("/v1/classify", json={"input": texts})
        assert r.status_code == 200, r.text
        want = classifier.classify(texts)
        got = r.json()["data"]
        assert [d["label"] for d in got] == [w["label"] for w in want]
        assert [d["score"] for d in got] == pytest.approx([w["score"] for w in want], abs=1e-6)
        assert set(got[0]["scores"]) == {"a", "b", "c"}
        wrong = c.post("/v1/completions", json={"prompt": "hi"})
        assert wrong.status_code == 400 and "/v1/classify" in wrong.json()["error"]["message"]


# ---------------------------------------------------------------------- bad requests ---------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": ""}, "empty prompt"),
        ({"prompt": ["ok", ""]}, "empty prompt"),
        ({"prompt": "word " * 200}, f"context is {CONTEXT}"),
        ({"prompt": "hi", "temperature": -1}, "temperature=-1"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature must be a finite number"),
        ({"prompt": "hi", "max_tokens": 65}, "limit of 64"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens >= 1"),
        ({"prompt": "hi", "best_of": 2}, "best_of is not supported"),
        ({"prompt": 42}, "prompt must be a string"),
        ({"prompt": "hi", "stop": [""]}, "stop="),
        ({"prompt": "hi", "stream": "yes"}, "stream must be true or false"),
        ({"prompt": "hi", "seed": -1}, "seed must be an integer >= 0"),
        ({"prompt": ["a"] * 9}, "at most 8 per request"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "at most 4 strings"),
        ({"prompt": "hi", "stop": "x" * 129}, "at most 128"),
    ],
)
def test_bad_completion_requests_are_400(client, body, says):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"prompt": "\\ud800 lone surrogate"}', "invalid character"),
        (b'{"prompt": "hi", "stop": ["\\udfff"]}', "invalid character"),
        (b'{"prompt": "hi", "max_tokens": 1' + b"0" * 400 + b"}", "max_tokens must be an integer"),
        (b'{"prompt": "hi", "temperature": 1' + b"0" * 400 + b"}", "temperature must be a finite"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_hostile_json_is_400_not_500(client, raw, says):
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_only_json_bodies_are_accepted(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/completions", content=b'{"prompt": "hi"}', headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    ok = client.post(
        "/v1/completions",
        content=b'{"prompt": "hi", "max_tokens": 2}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200, ok.text


def test_other_request_errors(client, lm):
    r = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/classify", json={"input": "hi"})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.get("/nope").json()["error"]["message"] == "Not Found"


def test_prompt_over_the_server_limit_is_400(lm):
    with local_client(create_app(lm, model_name="tiny", max_prompt_tokens=4)) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPTS[0]})
    assert r.status_code == 400 and "at most 4" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413(lm):
    with local_client(create_app(lm, model_name="tiny", max_body_bytes=1000)) as c:
        r = c.post("/v1/completions", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


# ---------------------------------------------------------------------- auth -----------------


def test_api_key_is_required_except_for_health(lm):
    with local_client(create_app(lm, model_name="tiny", api_key="s3cret")) as c:
        body = {"prompt": "hi", "max_tokens": 2}
        assert c.get("/health").status_code == 200
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/v1/completions", json=body, headers=wrong).status_code == 401
        assert c.get("/v1/models", headers=wrong).status_code == 401
        assert c.get("/metrics").status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/completions", json=body, headers=right).status_code == 200
        assert c.get("/v1/models", headers=right).status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("example.com", False)],
)  # fmt: skip
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_bind_without_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--api-key"):
        serve(tmp_path, host="0.0.0.0")  # refused before the model is even loaded
    check_bind("0.0.0.0", "key")
    check_bind("127.0.0.1", None)


# ---------------------------------------------------------------------- load -----------------


def test_concurrent_requests_are_batched(lm):
    model = Gated(lm)
    app = create_app(model, model_name="tiny", max_batch=4, batch_wait_ms=2000)
    results: dict[int, dict] = {}
    with local_client(app) as c:

        def ask(i: int) -> None:
            prompt = PROMPTS[i % len(PROMPTS)]
            results[i] = c.post("/v1/completions", json={"prompt": prompt, **GREEDY}).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        metrics = c.get("/metrics").text
    assert max(model.batches) > 1 and sum(model.batches) == 4
    for i, body in results.items():
        assert body["choices"][0]["text"] == expected(lm, PROMPTS[i % len(PROMPTS)]).text
    assert "edgezoo_batch_size_count" in metrics


def test_a_long_prompt_never_shortens_its_batch_mates_answers(lm):
    """A batch decodes at most context − its longest prompt tokens: a request that would cut
    another's answer short runs in a batch of its own."""
    model = Gated(lm, held=True)
    long_prompt = "def f(x):\n    return x\n" * 6
    n_long = len(lm.encode([long_prompt])[0])
    max_tokens = CONTEXT - n_long + 8  # fits the short prompt, not the long one
    assert 0 < CONTEXT - n_long < max_tokens < CONTEXT - 20
    results: dict[str, dict] = {}
    with local_client(create_app(model, model_name="tiny", batch_wait_ms=300)) as c:

        def ask(name: str, prompt: str) -> None:
            body = {"prompt": prompt, "temperature": 0, "max_tokens": max_tokens}
            results[name] = c.post("/v1/completions", json=body).json()

        threads = [
            threading.Thread(target=ask, args=("short", PROMPTS[1])),
            threading.Thread(target=ask, args=("long", long_prompt)),
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        model.release.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
    assert model.batches == [1, 1]
    lm_alone = lm.generate(PROMPTS[1], max_new_tokens=max_tokens)
    assert results["short"]["choices"][0]["text"] == lm_alone.text
    assert results["short"]["usage"]["completion_tokens"] == len(lm_alone.token_ids)


def test_full_queue_answers_503_with_retry_after(lm):
    model = Gated(lm, held=True)
    app = create_app(model, model_name="tiny", max_queue=1, batch_wait_ms=0)
    statuses = []
    with local_client(app) as c:

        def ask() -> None:
            statuses.append(
                c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code
            )

        first = threading.Thread(target=ask)
        first.start()
        assert model.started.wait(10)  # the worker holds request 1 ...
        second = threading.Thread(target=ask)
        second.start()
        deadline = time.monotonic() + 10
        while len(app.state.batcher.pending) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # ... and request 2 fills the queue
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        model.release.set()
        first.join(10)
        second.join(10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "overloaded"
    assert statuses == [200, 200]


def test_slow_request_times_out_with_504(lm):
    model = Gated(lm, held=True)
    with local_client(create_app(model, model_name="tiny", request_timeout_s=0.2)) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        s = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True})
        model.release.set()
    assert r.status_code == 504 and "0.2 s" in r.json()["error"]["message"]
    assert s.status_code == 504


def test_metrics_count_requests_and_tokens(lm):
    with local_client(create_app(lm, model_name="tiny")) as c:
        c.post("/v1/completions", json={"prompt": PROMPTS[1], **GREEDY})
        c.post("/v1/completions", json={"prompt": ""})
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'edgezoo_requests_total{endpoint="/v1/completions",status="200"} 1.0' in text
    assert 'edgezoo_requests_total{endpoint="/v1/completions",status="400"} 1.0' in text
    assert 'edgezoo_request_duration_seconds_count{endpoint="/v1/completions"} 2.0' in text
    want = expected(lm, PROMPTS[1])
    assert f"edgezoo_generated_tokens_total {float(len(want.token_ids))}" in text
    assert f"edgezoo_prompt_tokens_total {float(want.prompt_tokens)}" in text
    assert "edgezoo_queue_depth 0.0" in text
    assert "edgezoo_batch_size_bucket" in text


# ---------------------------------------------------------------------- streams & shutdown ---


class Endless:
    """A fake LM whose stream never ends on its own: shows whether a disconnect stops it."""

    context = CONTEXT
    max_token_chars = 16

    def __init__(self) -> None:
        self.pulled = 0

    def encode(self, prompts):
        return [[1, 2]] * len(prompts)

    def generate_ids(self, prompts, params=None):
        raise AssertionError("not used")

    def stream_batch_ids(self, prompts, params=None):
        for _ in range(10_000):
            self.pulled += 1
            time.sleep(0.002)
            yield StreamDelta(0, "x", None, None)
        yield StreamDelta(0, "", "length", SimpleNamespace(token_ids=[0] * self.pulled))


@pytest.mark.parametrize("spec", ["2.3", "2.4"])  # Starlette notices a disconnect differently
def test_stream_stops_generating_when_the_client_leaves(spec):
    """Raw ASGI: the client reads three chunks, then disconnects."""
    model = Endless()
    app = create_app(model, model_name="endless")
    body = json.dumps({"prompt": "hi", "stream": True, "max_tokens": 10_000}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1:8000")],
        "server": ("test", 80),
        "client": ("test", 1),
    }

    async def scenario() -> list[dict]:
        chunks, gone = [], asyncio.Event()
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                if gone.is_set():
                    raise OSError("client went away")  # what a server does on a closed socket
                chunks.append(message)
                if len(chunks) == 3:
                    gone.set()

        async with app.router.lifespan_context(app):
            with contextlib.suppress(ClientDisconnect):
                await asyncio.wait_for(app(scope, receive, send), 10)
            pulled = model.pulled
            await asyncio.sleep(0.1)
            assert model.pulled <= pulled + 1  # nothing generated after the stream ended
        return chunks

    chunks = asyncio.run(scenario())
    assert len(chunks) == 3
    assert model.pulled < 200  # stopped soon after the client left (loose: a loaded CI lags)


class SixSteps:
    """A fake LM streaming every row for six steps: shows who gets what from a shared batch."""

    context = CONTEXT

    def __init__(self) -> None:
        self.steps = 0

    def stream_batch_ids(self, prompts, params=None):
        for i in range(6):
            self.steps += 1
            for row in range(len(prompts)):
                yield StreamDelta(row, str(i), None, None)
        for row in range(len(prompts)):
            yield StreamDelta(row, "", "length", SimpleNamespace(token_ids=[0] * 6))


def pump(model, cancelled: tuple[bool, ...]) -> list[list]:
    """Run one stream batch of ``len(cancelled)`` jobs; return each job's events."""

    async def scenario() -> list[list]:
        batcher = Batcher(model, Metrics(), max_batch=4, max_queue=8, batch_wait_s=0)
        jobs = [Job([f"p{i}"], SamplingParams(), stream=True) for i in range(len(cancelled))]
        for job, gone in zip(jobs, cancelled, strict=True):
            if gone:
                job.cancelled.set()
        await asyncio.to_thread(batcher._pump, jobs, asyncio.get_running_loop())
        await asyncio.sleep(0.05)  # the thread's call_soon_threadsafe callbacks
        return [[job.events.get_nowait() for _ in range(job.events.qsize())] for job in jobs]

    return asyncio.run(scenario())


def test_a_stream_batch_goes_on_for_the_clients_still_there():
    model = SixSteps()
    stayed, left = pump(model, (False, True))
    assert "".join(e.text for e in stayed[:-1]) == "012345"
    assert stayed[-2].finish_reason == "length" and stayed[-2].completion_tokens == 6
    assert stayed[-1] is None  # its end marker
    assert left == [None]  # the client that left got nothing but the end marker
    assert model.steps == 6


def test_a_stream_batch_stops_when_every_client_has_left():
    model = SixSteps()
    assert pump(model, (True, True)) == [[None], [None]]
    assert model.steps == 1  # checked after the first delta


def test_shutdown_finishes_queued_work_then_refuses():
    class Slow:
        def generate_ids(self, prompts, params=None):
            time.sleep(0.05)
            return [SimpleNamespace(text=p.upper(), token_ids=[1]) for p in prompts]

    async def scenario():
        batcher = Batcher(Slow(), Metrics(), max_batch=2, max_queue=8, batch_wait_s=0)
        batcher.start()
        params = SamplingParams()
        jobs = [Job([f"p{i}"], params) for i in range(5)]
        for job in jobs:
            batcher.submit(job)
        await batcher.stop(timeout_s=10)
        with pytest.raises(Exception, match="shutting down"):
            batcher.submit(Job(["late"], params))
        return [job.future.result()[0].text for job in jobs], batcher.task.done()

    texts, stopped = asyncio.run(scenario())
    assert texts == ["P0", "P1", "P2", "P3", "P4"] and stopped


# ---------------------------------------------------------------------- packaging ------------


def test_serve_parser_defaults_and_env_key(monkeypatch):
    monkeypatch.setenv("EDGEZOO_API_KEY", "from-env")
    parser = argparse.ArgumentParser()
    register_runtime_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", "runs/x", "--max-batch", "4", "--timeout", "5"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, "from-env")
    assert (args.max_batch, args.max_queue, args.timeout) == (4, 64, 5.0)
    assert callable(args.fn)


def test_server_runs_without_torch(lm_dir):
    """Importing the module costs nothing (the CLI imports it); serving never needs torch."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from edgezoo.runtime import server as server
        assert "fastapi" not in sys.modules and "uvicorn" not in sys.modules
        from edgezoo import runtime
        from fastapi.testclient import TestClient
        lm = runtime.load({str(lm_dir)!r}, backend="ort-cpu")
        app = server.create_app(lm, model_name="t")
        with TestClient(app, base_url="http://localhost") as c:
            r = c.post("/v1/completions", json={{"prompt": "def f():", "max_tokens": 3}})
        print(r.status_code, r.json()["usage"]["completion_tokens"])
        assert not [m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None]
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "200"


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--port", "70000", "not a TCP port"),
        ("--port", "abc", "not a whole number"),
        ("--max-batch", "0", "use 1 or more"),
        ("--max-queue", "-3", "use 1 or more"),
        ("--timeout", "-1", "use a number > 0"),
        ("--threads", "-2", "use 0 or more"),
    ],
)
def test_bad_serve_flags_are_refused_before_the_model_loads(capsys, flag, value, says):
    parser = argparse.ArgumentParser()
    register_runtime_commands(parser.add_subparsers())
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["serve", "runs/does-not-exist", flag, value])
    assert stop.value.code == 2 and says in capsys.readouterr().err


class Broken(Gated):
    """An LM whose generate fails the way a bug would, with internals in its message."""

    def generate_ids(self, prompts, params=None, **overrides):
        raise RuntimeError("boom in /home/secret/model.onnx")


def test_a_server_bug_is_a_generic_500_with_a_request_id(lm, caplog):
    with local_client(
        create_app(Broken(lm), model_name="tiny"), raise_server_exceptions=False
    ) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", **GREEDY})
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "secret" not in message and "RuntimeError" not in message
    request_id = r.headers["x-request-id"]
    assert request_id in message
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and "boom in /home/secret" in str(logged[0].exc_info[1])


def test_health_reports_a_dead_worker(lm):
    app = create_app(lm, model_name="tiny")
    with local_client(app) as c:
        assert c.get("/health").json() == {"status": "ok", "model": "tiny", "worker": "running"}
        worker = app.state.batcher.task
        c.portal.call(lambda: worker.cancel())  # the worker dies (as if it had crashed)
        deadline = time.time() + 5
        while not worker.done() and time.time() < deadline:
            time.sleep(0.01)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["worker"] == "stopped"


# ---------------------------------------------------------------------- hostile traffic ------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("127.1.2.3", True),
        ("[::1]:8000", True),
        ("testserver", False),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example:8000", False),
        ("", False),
    ],
)
def test_a_keyless_server_answers_only_loopback_host_names(lm, host, allowed):
    """DNS rebinding: a web page re-points its own name at 127.0.0.1, but its requests keep
    that name in the Host header — a keyless server must not answer them."""
    with local_client(create_app(lm, model_name="tiny")) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", **GREEDY}, headers={"host": host})
        health = c.get("/health", headers={"host": host})
    if allowed:
        assert r.status_code == 200 and health.status_code == 200
    else:
        assert r.status_code == 403 and health.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "host_not_allowed" and "--api-key" in error["message"]


def test_a_server_with_a_key_answers_any_host(lm):
    with TestClient(create_app(lm, model_name="tiny", api_key="k")) as c:  # Host: testserver
        r = c.post(
            "/v1/completions",
            json={"prompt": "hi", **GREEDY},
            headers={"Authorization": "Bearer k", "host": "models.example.com"},
        )
    assert r.status_code == 200


class Tokenizing(Gated):
    """The real LM, recording where and how often prompts are tokenized and what the worker
    is handed."""

    def __init__(self, lm) -> None:
        super().__init__(lm)
        self.encoded_on_loop: list[bool] = []
        self.handed: list = []

    def encode(self, prompts):
        try:
            asyncio.get_running_loop()
            self.encoded_on_loop.append(True)
        except RuntimeError:
            self.encoded_on_loop.append(False)
        return self.lm.encode(prompts)

    def generate_ids(self, prompts, params=None, **overrides):
        self.handed.append(prompts)
        return self.lm.generate_ids(prompts, params, **overrides)


def test_prompts_are_tokenized_once_off_the_event_loop_and_the_worker_gets_ids(lm):
    model = Tokenizing(lm)
    with local_client(create_app(model, model_name="tiny")) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPTS[:2], **GREEDY})
    assert r.status_code == 200
    assert model.encoded_on_loop == [False]  # once, in a worker thread
    assert model.handed == [lm.encode(PROMPTS[:2])]  # ids, not text to encode again
    assert [c["text"] for c in r.json()["choices"]] == [expected(lm, p).text for p in PROMPTS[:2]]


def test_a_huge_prompt_is_refused_by_its_length_before_tokenizing(lm):
    model = Tokenizing(lm)
    huge = "x" * 1_000_000
    app = create_app(model, model_name="tiny", max_body_bytes=2_000_000, max_prompt_tokens=32)
    with local_client(app) as c:
        r = c.post("/v1/completions", json={"prompt": huge, **GREEDY})
        fits = c.post("/v1/completions", json={"prompt": "x" * 20, **GREEDY})
    assert r.status_code == 400
    assert "1000000 characters" in r.json()["error"]["message"]
    assert model.encoded_on_loop == [False]  # only the prompt that fits was tokenized
    assert fits.status_code == 200


def test_the_character_cap_never_refuses_a_prompt_that_fits(lm):
    """The cap is the token limit times the longest token: a prompt made of the longest
    token, repeated up to the limit, is still accepted."""
    longest = max(lm.tokenizer.get_vocab(), key=len)
    text = lm.tokenizer.decode([lm.tokenizer.token_to_id(longest)])
    limit = len(lm.encode([text * 8])[0])
    with local_client(create_app(lm, model_name="tiny", max_prompt_tokens=limit)) as c:
        r = c.post("/v1/completions", json={"prompt": text * 8, **GREEDY})
    assert r.status_code == 200, r.text


def test_the_queue_is_bounded_in_prompts_not_requests():
    async def scenario():
        batcher = Batcher(object(), Metrics(), max_batch=4, max_queue=4, batch_wait_s=0)
        batcher.submit(Job(["a", "b", "c"]))
        with pytest.raises(Exception, match="3 prompts queued"):
            batcher.submit(Job(["d", "e"]))  # 5 rows would wait: refused
        batcher.submit(Job(["d"]))  # 4 rows: fits
        return batcher.queued_rows

    assert asyncio.run(scenario()) == 4


def test_serve_sets_token_limits_and_a_connection_limit(lm_dir, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    serve(lm_dir, backend="ort-cpu", max_batch=4, max_queue=16)
    limits = seen["app"].state.context
    assert (limits.max_prompt_tokens, limits.max_tokens_limit) == (CONTEXT - 1, CONTEXT)
    assert seen["limit_concurrency"] == 16 + 4 + 32
