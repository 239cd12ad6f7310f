"""Continuous batching: every request gets exactly the answer it would get alone, whatever
the slots, chunk size and company; requests join a running batch at once, leave it within
a step, and the server's answers over the engine equal the Python API's."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import make_model_dir, tiny_llama
from fastapi.testclient import TestClient

from edgezoo import runtime
from edgezoo.errors import ConfigError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.engine import Engine, supports_engine
from edgezoo.runtime.engine_rows import EngineRequest
from edgezoo.runtime.sampling import SamplingParams as SP
from edgezoo.runtime.server import create_app

PROMPTS = [
    "def main(args):\n    return",
    "import os",
    'class Config(object):\n    """Hold',
    "x = 1\n" * 20,
]
MIXED = [
    SP(temperature=0, max_new_tokens=20),
    SP(temperature=0.8, top_k=20, seed=3, max_new_tokens=30, frequency_penalty=0.5),
    SP(temperature=1.0, top_p=0.9, seed=5, max_new_tokens=7, repetition_penalty=1.3),
    SP(temperature=0, max_new_tokens=40, stop=("\n\n", "x ="), presence_penalty=0.3),
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("engine-lm")
    make_model_dir(path, tiny_llama(max_position_embeddings=96), tokenizer)
    to_onnx(path, greedy_steps=8)
    model = runtime.load(path, backend="ort-cpu", variant="gqa")
    assert supports_engine(model)
    return model


def alone(lm, prompts, params):
    encoded = lm.encode(prompts)
    return [lm.generate_ids([ids], p)[0] for ids, p in zip(encoded, params, strict=True)]


@pytest.mark.parametrize(("slots", "chunk"), [(4, 128), (2, 5), (1, 3), (3, 1)])
def test_each_request_gets_its_answer_alone(lm, slots, chunk):
    want = alone(lm, PROMPTS, MIXED)
    got = Engine(lm, slots, prefill_chunk=chunk).generate(lm.encode(PROMPTS), MIXED)
    for w, g in zip(want, got, strict=True):
        assert (g.text, g.token_ids, g.finish_reason) == (w.text, w.token_ids, w.finish_reason)
        assert g.prompt_tokens == w.prompt_tokens


def test_logprobs_match_a_run_alone(lm):
    params = [SP(temperature=0, max_new_tokens=12, logprobs=3), SP(seed=1, logprobs=0)]
    want = alone(lm, PROMPTS[:2], params)
    got = Engine(lm, 2, prefill_chunk=4).generate(lm.encode(PROMPTS[:2]), params)
    for w, g in zip(want, got, strict=True):
        assert [e.token_id for e in g.logprobs] == g.token_ids == w.token_ids
        assert np.allclose([e.logprob for e in g.logprobs], [e.logprob for e in w.logprobs])
        assert [[t for t, _ in e.top] for e in g.logprobs] == [
            [t for t, _ in e.top] for e in w.logprobs
        ]


def test_per_prompt_settings_through_the_python_api(lm):
    got = lm.generate(PROMPTS, MIXED)
    assert [g.token_ids for g in got] == [w.token_ids for w in alone(lm, PROMPTS, MIXED)]
    with pytest.raises(Exception, match="one per prompt"):
        lm.generate(PROMPTS, MIXED[:2])


class Recorder:
    """Collects one request's deltas, in the engine's thread."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.finish: str | None = None

    def __call__(self, delta) -> None:
        assert not isinstance(delta, Exception), delta
        self.texts.append(delta.text)
        self.finish = delta.finish_reason or self.finish


def request(lm, prompt: str, params: SP) -> tuple[EngineRequest, Recorder]:
    rec = Recorder()
    return EngineRequest(lm.encode([prompt])[0], params, rec), rec


def test_a_new_request_joins_the_running_batch_at_once(lm):
    engine = Engine(lm, 2)
    long_req, long_rec = request(lm, PROMPTS[0], SP(max_new_tokens=60, ignore_eos=True))
    engine.submit(long_req)
    for _ in range(5):
        engine.step()
    short_req, short_rec = request(lm, PROMPTS[1], SP(max_new_tokens=3, ignore_eos=True))
    engine.submit(short_req)
    steps = 0
    while short_rec.finish is None:
        engine.step()
        steps += 1
    assert steps <= 3  # its three tokens, not the long request's remaining 55
    assert long_rec.finish is None and len(engine.rows) == 1  # its slot is free again
    while not engine.idle:
        engine.step()
    assert long_rec.finish == "length"


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(lm):
    engine = Engine(lm, 2, prefill_chunk=4)
    running, running_rec = request(lm, PROMPTS[1], SP(max_new_tokens=40, ignore_eos=True))
    engine.submit(running)
    engine.step()  # prefilled (short) + its first decode step
    tokens_before = len("".join(running_rec.texts))
    long_req, long_rec = request(lm, PROMPTS[3], SP(max_new_tokens=2, ignore_eos=True))
    chunks = -(-len(long_req.prompt_ids) // 4)
    engine.submit(long_req)
    decoded = []
    for _ in range(chunks):
        engine.step()
        decoded.append(engine.rows[0].length)
    assert len(set(decoded)) == chunks  # the running row advanced on every chunk's step
    assert long_rec.texts  # and the long prompt's first token came after its last chunk
    assert len("".join(running_rec.texts)) > tokens_before


def test_a_cancelled_request_leaves_within_a_step(lm):
    engine = Engine(lm, 3)
    reqs = [request(lm, p, SP(max_new_tokens=50, ignore_eos=True)) for p in PROMPTS[:3]]
    for req, _ in reqs:
        engine.submit(req)
    for _ in range(6):
        engine.step()
    assert len(engine.rows) == 3
    middle, middle_rec = reqs[1]
    seen = len(middle_rec.texts)
    middle.cancelled.set()
    engine.step()
    assert len(engine.rows) == 2 and len(middle_rec.texts) == seen
    while not engine.idle:
        engine.step()
    assert [rec.finish for _, rec in reqs] == ["length", None, "length"]


def test_a_slot_prefill_computes_only_its_last_logits(lm):
    """``SlotCache.prefill`` asks the graph for its chunk's last position only; ``extend``
    (speculative checks) for every one — the same numbers where they overlap."""
    from edgezoo.runtime.slot_cache import SlotCache

    chunk = np.array([5, 17, 42, 7, 99, 3])
    every = SlotCache(lm.session, 1, 32).extend(0, chunk, 0)
    cache = SlotCache(lm.session, 1, 32)
    computed = []
    run = cache._run
    cache._run = lambda *args: computed.append(run(*args)) or computed[-1]
    last = cache.prefill(0, chunk, 0)
    assert every.shape[0] == 6 and computed[0].shape[:2] == (1, 1)
    np.testing.assert_allclose(last, every[-1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(cache.extend(0, chunk[4:], 4), every[4:], rtol=0, atol=1e-5)


def test_the_engine_needs_the_gqa_graph_on_the_cpu():
    class Portable:
        graph, device = "portable", "cpu"

    with pytest.raises(ConfigError, match="gqa graph"):
        Engine(Portable(), 2)
    with pytest.raises(ConfigError, match="continuous batching needs"):
        create_app(Portable(), model_name="x", batching="continuous")


# ---------------------------------------------------------------------- the server ----------


@pytest.fixture(scope="module")
def client(lm):
    app = create_app(lm, model_name="tiny", max_batch=4)
    assert app.state.context.continuous
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def body(prompt: str, p: SP, **extra) -> dict:
    out = {
        "prompt": prompt,
        "max_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "repetition_penalty": p.repetition_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        **extra,
    }
    if p.seed is not None:
        out["seed"] = p.seed
    if p.stop:
        out["stop"] = list(p.stop)
    return out


def test_concurrent_requests_with_mixed_settings_each_get_their_answer(client, lm):
    want = alone(lm, PROMPTS, MIXED)
    texts: dict[int, str] = {}

    def call(i: int) -> None:
        r = client.post("/v1/completions", json=body(PROMPTS[i], MIXED[i]))
        assert r.status_code == 200, r.text
        texts[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [texts[i] for i in range(len(PROMPTS))] == [w.text for w in want]


def test_streams_over_the_engine_join_to_the_same_text(client, lm):
    greedy = SP(temperature=0, max_new_tokens=20)
    want = alone(lm, PROMPTS[:2], [greedy, greedy])
    payload = {"prompt": PROMPTS[:2], "max_tokens": 20, "temperature": 0, "stream": True}
    raw = client.post("/v1/completions", json=payload).text
    assert raw.endswith("data: [DONE]\n\n")
    chunks = [
        json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n") if e and e != "data: [DONE]"
    ]
    for index in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == want[index].text
        assert mine[-1]["finish_reason"] == "length"


def test_a_timed_out_request_frees_its_slot_within_a_step(lm):
    app = create_app(lm, model_name="tiny", max_batch=1, request_timeout_s=0.1)
    with TestClient(app, base_url="http://localhost") as c:
        engine = app.state.batcher.engine
        decode, steps = engine.cache.decode, []

        def slow_decode(tokens, lengths):  # 88 tokens would take ~1.8 s
            steps.append(1)
            threading.Event().wait(0.02)
            return decode(tokens, lengths)

        engine.cache.decode = slow_decode
        r = c.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 88})
        assert r.status_code == 504
        for _ in range(100):
            if engine.idle:
                break
            threading.Event().wait(0.01)
        assert engine.idle
    assert len(steps) < 30  # it stopped soon after the timeout, not after 88 tokens


def test_seeded_rows_of_one_request_get_their_own_streams(lm):
    from edgezoo.runtime.continuous import row_params

    p = SP(temperature=1.0, seed=7, max_new_tokens=12)
    rows = [row_params(p, i) for i in range(3)]
    assert [r.seed for r in rows] == [7, 8, 9] and rows[0] is p
    got = Engine(lm, 3).generate(lm.encode([PROMPTS[0]] * 3), rows)
    assert got[0].token_ids == alone(lm, PROMPTS[:1], [p])[0].token_ids
    assert len({tuple(g.token_ids) for g in got}) == 3  # n copies differ


# ---------------------------------------------------------------------- clients --------------

CHAT = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "def main(args):"},
]


@pytest.fixture(scope="module")
def engine_url(lm):
    from edgezoo.runtime.load_test import running_server

    app = create_app(lm, model_name="tiny", max_batch=4, max_tokens_limit=32)
    assert app.state.context.continuous
    with running_server(app) as url:
        yield url


def chat_reference(lm, max_tokens: int) -> str:
    from edgezoo.runtime.chat_template import render_chat

    prompt = render_chat(lm.chat_config, CHAT)
    ids = lm.tokenizer.encode(prompt, add_special_tokens=False).ids
    return lm.generate_ids([ids], SP(temperature=0, max_new_tokens=max_tokens))[0].text


def test_the_openai_client_over_the_engine(lm, engine_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)
    want = chat_reference(lm, 12)
    chat = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == want
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    done = client.completions.create(
        model="tiny", prompt=PROMPTS[0], max_tokens=10, n=3, seed=4, temperature=1.0, logprobs=2
    )
    assert len(done.choices) == 3 and len({c.text for c in done.choices}) > 1
    for choice in done.choices:
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
        # a dict per token: two top tokens that decode alike share one key
        assert all(1 <= len(top) <= 2 for top in choice.logprobs.top_logprobs)


def test_langchain_chat_openai_over_the_engine(lm, engine_url):
    chat_openai = pytest.importorskip("langchain_openai")
    model = chat_openai.ChatOpenAI(
        base_url=f"{engine_url}/v1", api_key="unused", model="tiny", temperature=0, max_tokens=12
    )
    answer = model.invoke([("system", CHAT[0]["content"]), ("human", CHAT[1]["content"])])
    assert answer.content == chat_reference(lm, 12)
