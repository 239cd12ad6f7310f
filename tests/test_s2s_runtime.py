"""s2s runtime and serving: the language model's generate / stream / batching / sampling API
on an encoder–decoder, and /v1/completions with the prompt as the source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import S2S_SOURCES
from fastapi.testclient import TestClient

from edgezoo import runtime
from edgezoo.errors import InputError
from edgezoo.runtime.batcher import Batcher
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.server import create_app
from edgezoo.runtime.server_metrics import Metrics

SOURCES = [*S2S_SOURCES, "import os"]  # three lengths: the batch pads two of them
GREEDY = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def model(s2s_exported):
    return runtime.load(s2s_exported[0], backend="ort-cpu", variant="fp32")  # not a quantized one


@pytest.fixture(scope="module")
def client(model):
    app = create_app(
        model, model_name="tiny-s2s", max_prompt_tokens=model.context, max_tokens_limit=64
    )
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def test_a_batch_decodes_as_each_source_alone(model):
    batch = model.generate(SOURCES, GREEDY)
    alone = [model.generate(s, GREEDY) for s in SOURCES]
    assert [g.token_ids for g in batch] == [g.token_ids for g in alone]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert len({tuple(g.token_ids) for g in batch}) > 1  # the sources really differ
    assert [g.prompt_tokens for g in batch] == [len(model.tokenizer.encode(s).ids) for s in SOURCES]
    # Per-source params: each runs with its own budget, as it would alone.
    each = model.generate(SOURCES[:2], [SamplingParams(max_new_tokens=n) for n in (3, 7)])
    assert [g.token_ids for g in each] == [alone[0].token_ids[:3], alone[1].token_ids[:7]]


def test_only_the_decoder_that_runs_every_step_keeps_its_threads_spinning(model):
    """The encoder and the first decoder step run once per request: their threads must
    sleep after it, not busy-wait on the cores the with-past steps run on."""
    from edgezoo.runtime.session import spins

    assert not spins(model.encoder) and not spins(model.decoder)
    assert spins(model.decoder_with_past)


def test_stream_deltas_join_to_the_generated_text(model):
    want = model.generate(SOURCES[0], max_new_tokens=16, ignore_eos=True)
    deltas = list(model.stream(SOURCES[0], max_new_tokens=16, ignore_eos=True))
    assert "".join(deltas) == want.text and len(deltas) > 1
    assert model.last.token_ids == want.token_ids and model.last.finish_reason == "length"
    rows: dict[int, str] = {}
    finished = {}
    for d in model.stream_batch(SOURCES, GREEDY):
        rows[d.row] = rows.get(d.row, "") + d.text
        if d.finish_reason:
            finished[d.row] = d.generation
    batch = model.generate(SOURCES, GREEDY)
    assert [rows.get(i, "") for i in range(3)] == [g.text for g in batch]
    assert [finished[i].token_ids for i in range(3)] == [g.token_ids for g in batch]


def test_a_stop_string_cuts_the_text_in_generate_and_stream(model):
    full = model.generate(SOURCES[1], max_new_tokens=24, ignore_eos=True).text
    assert len(full) >= 6, full
    stop = full[3:5]  # its first occurrence may come earlier: the cut is there
    cut = full[: full.index(stop)]
    got = model.generate(SOURCES[1], max_new_tokens=24, ignore_eos=True, stop=stop)
    assert got.text == cut and got.finish_reason == "stop"
    assert "".join(model.stream(SOURCES[1], max_new_tokens=24, ignore_eos=True, stop=stop)) == cut
    assert model.last.finish_reason == "stop"


def test_seeded_sampling_repeats_and_logprobs_are_recorded(model):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5, logprobs=2)
    a, b = (model.generate(SOURCES, params) for _ in range(2))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    for g in a:
        assert len(g.logprobs) == len(g.token_ids)
        assert all(e.logprob <= 0 and len(e.top) == 2 for e in g.logprobs)


def test_bad_sources_are_refused_clearly(model):
    with pytest.raises(InputError, match="empty"):
        model.generate("")
    with pytest.raises(InputError, match="empty source"):
        model.generate_ids([[5, 6], []])
    with pytest.raises(InputError, match=f"at most {model.context}"):
        model.generate("def f(x): return x\n" * 40)
    with pytest.raises(InputError, match="vocabulary"):
        model.generate_ids([[5, 10_000]])


def test_static_batching_lets_any_source_join(model):
    # An LM's batch shares context − longest prompt; an s2s target has its own positions.
    batcher = Batcher(model, Metrics(), max_batch=4, max_queue=8, batch_wait_s=0)
    assert batcher.context is None


def test_completions_answer_with_the_target(client, model):
    body = {"prompt": SOURCES, "max_tokens": 12, "temperature": 0}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    want = model.generate(SOURCES, GREEDY)
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["text"] for c in choices] == [g.text for g in want]
    assert [c["finish_reason"] for c in choices] == [
        "length" if g.finish_reason == "length" else "stop" for g in want
    ]
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == sum(g.prompt_tokens for g in want)
    assert usage["completion_tokens"] == sum(len(g.token_ids) for g in want)


def test_completions_stream_the_target(client, model):
    body = {"prompt": SOURCES[0], "max_tokens": 16, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    want = model.generate(SOURCES[0], max_new_tokens=16)
    assert "".join(c["text"] for c in chunks) == want.text
    assert chunks[-1]["finish_reason"] is not None


def test_models_health_and_chat_redirect(client, model):
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny-s2s" and card["context_length"] == model.context
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]


def test_bad_completion_requests_get_400s(client, model):
    empty = client.post("/v1/completions", json={"prompt": "", "max_tokens": 4})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
    long = client.post("/v1/completions", json={"prompt": "def f(x): return x\n" * 40})
    assert long.status_code == 400
    assert f"at most {model.context}" in long.json()["error"]["message"]
    too_many = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 65})
    assert too_many.status_code == 400


def _plain_loop(model, ids, mask, steps, feed_ids):
    """The reference: ``session.run`` with numpy feeds (no binding) over the three graphs;
    ``feed_ids(step, logits)`` picks the next ids. Returns each step's logits."""
    from edgezoo import io_names

    (hidden,) = model.encoder.run(None, {"input_ids": ids, "attention_mask": mask})
    start = np.full((ids.shape[0], 1), model.start_id, np.int64)
    out = model.decoder.run(
        None, {"encoder_attention_mask": mask, "input_ids": start, "encoder_hidden_states": hidden}
    )
    names = [o.name for o in model.decoder.get_outputs()]
    cache = {
        i.name: out[names.index(io_names.present_of(i.name))]
        for i in model.decoder_with_past.get_inputs()
        if io_names.is_past(i.name)
    }
    self_names = [n for n in cache if ".decoder." in n]
    logits = [out[0][:, -1]]
    for step in range(steps):
        feed = {"encoder_attention_mask": mask, "input_ids": feed_ids(step, logits[-1])}
        out = model.decoder_with_past.run(None, {**feed, **cache})
        cache.update(zip(self_names, out[1:], strict=True))
        logits.append(out[0][:, -1])
    return logits


def test_bound_steps_give_a_plain_run_loops_logits_exactly(model):
    """I/O binding changes where the K/V live between steps, not the numbers: a padded
    batch, one row fed the pad id as if finished, the same logits bit for bit."""
    from edgezoo.runtime.s2s_binding import BoundDecoder
    from edgezoo.runtime.seq2seq import _right_padded

    ids, mask = _right_padded([model.tokenizer.encode(s).ids for s in SOURCES])
    assert len(set(mask.sum(1).tolist())) == 3  # three lengths: real padding

    def greedy_with_row0_done(step, logits):
        nxt = logits.argmax(-1).astype(np.int64)[:, None]
        if step >= 2:
            nxt[0] = model.pad_id
        return nxt

    want = _plain_loop(model, ids, mask, 10, greedy_with_row0_done)
    bound = BoundDecoder(model.encoder, model.decoder, model.decoder_with_past)
    got = [bound.start(ids, mask, model.start_id).copy()]  # the buffer is reused per step
    for step in range(10):
        got.append(bound.step(greedy_with_row0_done(step, got[-1])).copy())
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)
    # And the model's own loop picks exactly the plain loop's greedy tokens.
    picked = []

    def greedy(step, logits):
        picked.append(logits.argmax(-1))
        return picked[-1].astype(np.int64)[:, None]

    picked.append(_plain_loop(model, ids, mask, 11, greedy)[-1].argmax(-1))  # 12 tokens
    rows = [model.tokenizer.encode(s).ids for s in SOURCES]
    gens = model.generate_ids(rows, max_new_tokens=12, ignore_eos=True)
    assert [g.token_ids for g in gens] == np.stack(picked, 1).tolist()


@pytest.mark.parametrize("peer", ["optimum-ort", "ctranslate2"])
def test_peers_in_the_s2s_benchmark_decode_our_greedy_tokens(peer, s2s_exported, model, tmp_path):
    """The benchmark's peer runners (EOS ignored, ids mapped back) give our tokens exactly."""
    pytest.importorskip({"optimum-ort": "optimum.onnxruntime", "ctranslate2": "ctranslate2"}[peer])
    from benchmarks.s2s_bench import LOADERS

    loaded = LOADERS[peer](s2s_exported[0], "fp32", 1, tmp_path)
    for source in SOURCES:
        ids = model.tokenizer.encode(source).ids
        want = model.generate_ids([ids], max_new_tokens=12, ignore_eos=True)[0].token_ids
        assert loaded.run(ids, 12) == want
