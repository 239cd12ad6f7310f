"""Property-based tests (Hypothesis) for request parsing and sampling, and an API fuzz run
(Schemathesis over the server's OpenAPI document, published for this test only).

The properties: any JSON body gets a CompletionRequest or a 4xx ApiError — never another
exception; a body inside the documented schema is accepted as written; the sampler always
returns a token the parameters allow; stop-string scanning of only the new tail finds what
scanning the whole text finds. The fuzz run: no generated request gets a 5xx.
"""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from conftest import make_model_dir, tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from edgezoo import runtime
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.load_test import running_server
from edgezoo.runtime.protocol import (
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    ApiError,
    CompletionRequest,
    parse_completion,
)
from edgezoo.runtime.sampling import (
    GREEDY_BELOW,
    MAX_PENALTY,
    MIN_PENALTY,
    Sampler,
    SamplingParams,
    StopChecker,
    apply_repetition_penalty,
)
from edgezoo.runtime.server import create_app

FIELDS = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "n",
    "echo",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_body_is_a_request_or_a_4xx(body):
    try:
        req = parse_completion(body, model_name="m", max_tokens_limit=64, max_prompts=8)
    except ApiError as e:
        assert 400 <= e.status < 500 and e.message
        return
    assert isinstance(req, CompletionRequest)
    rows = len(req.prompts or req.prompt_ids or ()) * req.n  # text or token-id prompts, n each
    assert 1 <= rows <= 8 and 1 <= req.params.max_new_tokens <= 64
    assert req.params.validate() is req.params


good_bodies = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=30) | st.lists(st.text(max_size=10), min_size=1)},
    optional={
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 5),
        "top_p": st.floats(0, 1, exclude_min=True),
        "top_k": st.integers(0, 100),
        "stop": st.lists(st.text(min_size=1, max_size=MAX_STOP_CHARS), max_size=MAX_STOP_STRINGS),
        "seed": st.integers(0, 2**63),
        "stream": st.booleans(),
    },
).filter(lambda b: isinstance(b["prompt"], str) or len(b["prompt"]) <= 8)


@settings(max_examples=300, deadline=None)
@given(good_bodies)
def test_a_body_inside_the_schema_is_taken_as_written(body):
    try:
        req = parse_completion(body, model_name="m", max_tokens_limit=64, max_prompts=8)
    except ApiError as e:  # the only refusal left: text no tokenizer can encode
        assert "surrogate" in e.message
        return
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    assert req.prompts == prompts
    assert req.params.max_new_tokens == body.get("max_tokens", 16)
    assert req.params.temperature == body.get("temperature", 1.0)
    assert req.params.stop == tuple(body.get("stop", ()))
    assert req.stream == body.get("stream", False)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.floats(-50, 50), min_size=2, max_size=40),
    temperature=st.sampled_from([0.0, 1e-310, 1e-6, GREEDY_BELOW, 0.5, 1.0, 3.0]),
    top_k=st.integers(0, 50),
    top_p=st.floats(0.01, 1.0),
    penalty=st.sampled_from([MIN_PENALTY, 0.5, 1.0, 1.3, MAX_PENALTY]),
    seed=st.integers(0, 2**32),
)
def test_the_sampler_picks_a_token_the_parameters_allow(
    logits, temperature, top_k, top_p, penalty, seed
):
    scores = np.array([logits], np.float32)
    seen = np.random.default_rng(seed).random(scores.shape) < 0.3
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty, seed=seed
    )
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no inf, no NaN
        token = int(Sampler(params)(scores, seen)[0])
    penalised = apply_repetition_penalty(scores, seen, penalty)[0]
    assert 0 <= token < len(logits)
    if params.greedy:
        assert token == int(np.argmax(penalised))
    elif top_k:
        kth = np.sort(penalised)[::-1][min(top_k, len(logits)) - 1]
        assert penalised[token] >= kth  # never outside the k most likely


@pytest.mark.parametrize("penalty", [0.0, 1e-300, 1e-4, 1e4, float("inf")])
def test_a_repetition_penalty_that_would_overflow_is_refused(penalty):
    with pytest.raises(ApiError, match="repetition_penalty"):
        parse_completion({"prompt": "a", "repetition_penalty": penalty}, model_name="m")


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="ab<>/", max_size=4), min_size=1, max_size=30),
    stops=st.lists(st.text(alphabet="ab<>/", min_size=1, max_size=5), min_size=1, max_size=4),
)
def test_scanning_only_the_new_tail_finds_the_first_stop(pieces, stops):
    """A decode loop truncates after every step scanning from the previous text's tail;
    it must cut exactly where scanning the whole text would."""
    checker = StopChecker(stops)
    text, cut = "", None
    for piece in pieces:
        before = len(text)
        text += piece
        truncated, hit = checker.truncate(text, since=before)
        if hit:
            cut = truncated
            break
    whole = "".join(pieces)
    first = checker.find(whole)
    if first < 0:
        assert cut is None
    else:
        assert cut == whole[:first]


# ---------------------------------------------------------------------- API fuzz -----------


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("fuzz-lm")
    make_model_dir(path, tiny_llama(max_position_embeddings=64), tokenizer)
    to_onnx(path, greedy_steps=4, fast=False, optimize=False)
    lm = runtime.load(path, backend="ort-cpu")
    app = create_app(
        lm,
        model_name="tiny",
        max_tokens_limit=16,
        request_timeout_s=30,
        openapi_url="/openapi.json",
    )
    with running_server(app) as url:
        yield url


def test_the_api_fuzzed_from_its_openapi_document_never_answers_5xx(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/v1/completions"),
        ("POST", "/v1/classify"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
    }
    for operation in operations:
        strategy = operation.as_strategy()

        @settings(
            max_examples=50,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        fuzz()
