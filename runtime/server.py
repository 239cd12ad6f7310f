"""An OpenAI-compatible HTTP server over ``runtime.load``: completions, classify, metrics.

    edgezoo serve runs/lm-small --port 8000
    curl localhost:8000/v1/completions -d '{"prompt": "def main():", "max_tokens": 32}'

One background worker owns the model. Requests wait in a bounded queue; the worker runs
those that would get the same answer together (same sampling params, no seed) as one
batched ``generate`` in a thread, so the event loop stays free and the model is never
called from two threads at once. Streams go through the same worker, one at a time.

fastapi, uvicorn and prometheus_client (the ``serve`` extra) are imported only when a
server is built, so importing this module (the CLI does, for ``--help``) costs nothing.
This file has no ``from __future__ import annotations`` on purpose: FastAPI reads the
endpoint annotations, and the endpoints' ``Request`` is imported inside ``create_app``.
"""

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError, EdgeZooError
from runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/classify")
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
RETRY_AFTER_S = 1
# OpenAI fields we do not implement, with the value that means "off": anything else is a 400,
# so a client never silently gets something other than what it asked for.
UNSUPPORTED = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": None,
    "suffix": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
}


# ---------------------------------------------------------------------- errors -------------


class ApiError(Exception):
    """An HTTP error whose body is OpenAI's ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


def overloaded(message: str) -> ApiError:
    """503 with Retry-After: well-behaved clients (the openai package) back off and retry."""
    return ApiError(503, message, code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})


# ---------------------------------------------------------------------- requests -----------


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False


def parse_completion(
    body: dict[str, Any], *, model_name: str, max_tokens_limit: int | None = None
) -> CompletionRequest:
    """Check an OpenAI completions body field by field; errors name the field and the fix."""
    check_model(body, model_name)
    for name, off in UNSUPPORTED.items():
        if body.get(name) not in (None, off):
            raise ApiError(
                400, f"{name} is not supported by this server; leave it out.", param=name
            )
    max_tokens = _number(body, "max_tokens", DEFAULT_MAX_TOKENS, integer=True)
    if max_tokens < 1:
        raise ApiError(
            400, f"max_tokens={max_tokens} is invalid; use max_tokens >= 1.", param="max_tokens"
        )
    if max_tokens_limit is not None and max_tokens > max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} is over this server's limit of {max_tokens_limit}; "
            f"ask for at most {max_tokens_limit} tokens.",
            param="max_tokens",
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ApiError(400, f"seed must be an integer >= 0, got {seed!r:.80}.", param="seed")
    params = SamplingParams(
        temperature=_number(body, "temperature", 1.0),
        top_k=_number(body, "top_k", 0, integer=True),
        top_p=_number(body, "top_p", 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0),
        max_new_tokens=max_tokens,
        stop=_stop_strings(body.get("stop")),
        seed=seed,
    ).validate()  # ConfigError -> 400 with the runtime's message
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r:.80}.", param="stream")
    options = body.get("stream_options") or {}
    return CompletionRequest(
        prompts=_strings(body.get("prompt"), "prompt"),
        params=params,
        stream=bool(stream),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def parse_classify(body: dict[str, Any], *, model_name: str) -> list[str]:
    """``{"input": str | list[str]}``; empty texts are refused here, before they are batched."""
    check_model(body, model_name)
    texts = _strings(body.get("input"), "input")
    if any(not t.strip() for t in texts):
        raise ApiError(
            400, "input has an empty text; give non-empty strings to classify.", param="input"
        )
    return texts


def check_model(body: dict[str, Any], model_name: str) -> None:
    """Like OpenAI, a request for another model is a 404 (leaving ``model`` out is fine)."""
    asked = body.get("model")
    if asked not in (None, model_name):
        raise ApiError(
            404,
            f"model {asked!r} is not served here; this server serves {model_name!r} (see GET /v1/models).",
            code="model_not_found",
            param="model",
        )


def _strings(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ApiError(
        400,
        f"{name} must be a string or a non-empty list of strings, got {value!r:.80}.",
        param=name,
    )


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ApiError(
        400, f"stop must be a string or a list of strings, got {value!r:.80}.", param="stop"
    )


def _number(body: dict[str, Any], name: str, default: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"  # JSON parsing allows NaN
        raise ApiError(400, f"{name} must be {kind}, got {value!r:.80}.", param=name)
    return value


async def read_json(request: "Request", max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read at most ``max_bytes`` far (a huge body costs nothing)."""
    too_large = ApiError(
        413, f"request body is over {max_bytes} bytes; send fewer or shorter prompts per request."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object.")
    return data


def prompt_lengths(model: Any, prompts: list[str], max_prompt_tokens: int | None) -> list[int]:
    """Token count per prompt. Checked before queueing, so one bad prompt never fails a batch."""
    lengths = [len(ids) for ids in model.encode(prompts)]  # InputError: empty / over context
    longest = max(lengths)
    if max_prompt_tokens is not None and longest > max_prompt_tokens:
        raise ApiError(
            400,
            f"prompt is {longest} tokens but this server accepts at most {max_prompt_tokens}; "
            "shorten the prompt.",
            param="prompt",
        )
    return lengths


# ---------------------------------------------------------------------- responses ----------


def finish_reason(runtime_reason: str | None) -> str | None:
    """The runtime says eos / stop / length; OpenAI says stop for both of the first two."""
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(runtime_reason or "")


def completion_body(head: dict[str, Any], generations: list[Any]) -> dict[str, Any]:
    choices = [
        {
            "text": g.text,
            "index": i,
            "logprobs": None,
            "finish_reason": finish_reason(g.finish_reason),
        }
        for i, g in enumerate(generations)
    ]
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(len(g.token_ids) for g in generations)
    return {**head, "choices": choices, "usage": usage(prompt, completion)}


def classify_body(model_name: str, labels: list[str], probs: list[Any]) -> dict[str, Any]:
    data = [
        {
            "object": "classification",
            "index": i,
            "label": labels[int(p.argmax())],
            "score": float(p.max()),
            "scores": dict(zip(labels, map(float, p), strict=True)),
        }
        for i, p in enumerate(probs)
    ]
    return {"object": "list", "model": model_name, "data": data}


def model_card(model: Any, model_name: str, created: int) -> dict[str, Any]:
    """OpenAI's model object, plus what a client may want to know about this one."""
    return {
        "id": model_name,
        "object": "model",
        "created": created,
        "owned_by": "edgezoo",
        "backend": getattr(model, "backend", None),
        "variant": getattr(model, "variant", None),
        "context_length": getattr(model, "context", None),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event in OpenAI's framing: ``data: <json>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# ---------------------------------------------------------------------- metrics ------------


class Metrics:
    """Prometheus metrics in the app's own registry, so two apps in one process never clash."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "edgezoo_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "edgezoo_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated_tokens = Counter(
            "edgezoo_generated_tokens",
            "Tokens generated (completions and streams).",
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "edgezoo_prompt_tokens", "Prompt tokens processed.", registry=registry
        )
        self.queue_depth = Gauge(
            "edgezoo_queue_depth", "Requests waiting for the model.", registry=registry
        )
        self.batch_size = Histogram(
            "edgezoo_batch_size",
            "Rows per model call.",
            registry=registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streams pass through untouched and their latency
    is measured to the last byte. Unknown paths count as "other": no unbounded label values."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status, start = 500, time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------- the worker ---------


@dataclass(frozen=True)
class StreamEvent:
    index: int  # which prompt of the request
    text: str
    finish_reason: str | None  # set on the prompt's last event
    completion_tokens: int = 0  # set on the prompt's last event


@dataclass(eq=False)
class Job:
    """One request's work: its texts, how to sample (None for a classifier), where results go.

    A streaming job has ``events``, fed from the worker thread; ``cancelled`` is how the
    request tells that thread to stop (client gone, timeout).
    """

    inputs: list[str]
    params: SamplingParams | None = None
    prompt_tokens: int = 0
    stream: bool = False
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batchable(self) -> bool:
        """A seed fixes one random stream per model call, so a seeded job runs alone."""
        return not self.stream and (self.params is None or self.params.seed is None)

    def fits_with(self, other: "Job") -> bool:
        """Share a model call only when it gives each job the answer it would get alone."""
        return self.batchable and other.batchable and self.params == other.params


class Batcher:
    """Owns the model: a bounded queue of jobs and the single worker that runs them."""

    def __init__(
        self, model: Any, metrics: Metrics, *, max_batch: int, max_queue: int, batch_wait_s: float
    ) -> None:
        self.model, self.metrics = model, metrics
        self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
        self.is_lm = hasattr(model, "generate")
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.arrived = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task | None = None

    # -- called by requests --

    def submit(self, job: Job) -> None:
        if self.closed:
            raise overloaded("server is shutting down; retry shortly.")
        if len(self.pending) >= self.max_queue:
            raise overloaded(
                f"server is busy ({len(self.pending)} requests queued); retry after {RETRY_AFTER_S} s."
            )
        self.pending.append(job)
        self._queue_changed()

    def cancel(self, job: Job) -> None:
        """Forget a job whose request gave up: drop it if queued, stop it if streaming."""
        job.cancelled.set()
        with contextlib.suppress(ValueError):
            self.pending.remove(job)
            self._queue_changed()

    # -- lifecycle --

    def start(self) -> None:
        self.task = asyncio.create_task(self._work())

    async def stop(self, timeout_s: float) -> None:
        """Refuse new jobs, finish the queued and running ones (up to ``timeout_s``), stop."""
        self.closed = True
        self.arrived.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        except asyncio.TimeoutError:
            self.task.cancel()  # a model call already running finishes in its thread, unheard
            for job in [*self.running, *self.pending]:
                _fail(job, overloaded("server shut down before this request finished."))
            self.pending.clear()

    # -- the worker --

    async def _work(self) -> None:
        while (job := await self._next()) is not None:
            if job.stream:
                self.running = [job]
                await asyncio.to_thread(self._pump, job, asyncio.get_running_loop())
            else:
                self.running = await self._gather(job)
                await self._run(self.running)
            self.running = []

    async def _next(self) -> Job | None:
        """The oldest queued job; None once closed and drained."""
        while not self.pending:
            if self.closed:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        job = self.pending.popleft()
        self._queue_changed()
        return job

    async def _gather(self, first: Job) -> list[Job]:
        """``first`` plus compatible jobs, up to ``max_batch`` rows, waiting ``batch_wait_s``
        at most: a few ms of latency buys a batch whose rows cost little more than one."""
        batch, rows = [first], len(first.inputs)
        if not first.batchable:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while rows < self.max_batch:
            for job in list(self.pending):
                if job.fits_with(first) and rows + len(job.inputs) <= self.max_batch:
                    self.pending.remove(job)
                    batch.append(job)
                    rows += len(job.inputs)
            self._queue_changed()
            remaining = deadline - loop.time()
            if rows >= self.max_batch or remaining <= 0 or self.closed:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, batch: list[Job]) -> None:
        """One model call (in a thread) for the whole batch; each job gets its own rows."""
        inputs = [text for job in batch for text in job.inputs]
        try:
            outputs = await asyncio.to_thread(self._call_model, inputs, batch[0].params)
        except Exception as e:  # reaches each request as its own error (400 or 500)
            for job in batch:
                _fail(job, e)
            return
        self.metrics.prompt_tokens.inc(sum(job.prompt_tokens for job in batch))
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(outputs[start : start + len(job.inputs)])
            start += len(job.inputs)

    def _call_model(self, inputs: list[str], params: SamplingParams | None) -> list[Any]:
        """Runs in the worker thread. A request with more texts than ``max_batch`` is split."""
        outputs: list[Any] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start : start + self.max_batch]
            self.metrics.batch_size.observe(len(chunk))
            if self.is_lm:
                generations = self.model.generate(chunk, params)
                self.metrics.generated_tokens.inc(sum(len(g.token_ids) for g in generations))
                outputs.extend(generations)
            else:
                outputs.extend(self.model.predict_proba(chunk))
        return outputs

    def _pump(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in the worker thread: stream each prompt, handing events to the request's loop.

        ``cancelled`` is checked after every event, so a client that left costs at most one
        more token; ``None`` marks the end, an exception an error.
        """

        def put(item: StreamEvent | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(job.events.put_nowait, item)

        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        try:
            for index, prompt in enumerate(job.inputs):
                with contextlib.closing(self.model.stream_events(prompt, job.params)) as events:
                    for text, finish in events:
                        if job.cancelled.is_set():
                            return
                        tokens = len(self.model.last.token_ids) if finish else 0
                        self.metrics.generated_tokens.inc(tokens)
                        put(StreamEvent(index, text, finish, tokens))
        except Exception as e:
            put(e)
        finally:
            put(None)

    def _queue_changed(self) -> None:
        self.arrived.set()
        self.metrics.queue_depth.set(len(self.pending))


def _fail(job: Job, error: Exception) -> None:
    if job.cancelled.is_set():
        return  # its request has gone: an unread exception would only be logged as a leak
    if job.stream:
        job.events.put_nowait(error)
    elif not job.future.done():
        job.future.set_exception(error)


async def wait_result(batcher: Batcher, job: Job, timeout_s: float) -> list[Any]:
    try:
        return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
    except asyncio.TimeoutError:
        batcher.cancel(job)
        raise timed_out(timeout_s) from None


async def next_event(job: Job, deadline: float) -> StreamEvent | Exception | None:
    """The job's next stream event, or ``asyncio.TimeoutError`` past the request's deadline."""
    remaining = deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(job.events.get(), max(remaining, 0))


def timed_out(timeout_s: float) -> ApiError:
    return ApiError(
        504,
        f"request took longer than the server's timeout of {timeout_s:g} s; "
        "ask for fewer tokens or retry when the server is less busy.",
        code="timeout",
    )


async def sse_stream(
    batcher: Batcher,
    job: Job,
    first: StreamEvent,
    *,
    chunk: Callable[[StreamEvent], dict[str, Any]],
    usage_chunk: Callable[[int], dict[str, Any]] | None,
    is_disconnected: Callable[[], Any],
    deadline: float,
    timeout_s: float,
) -> AsyncIterator[str]:
    """SSE text for one streaming job: a chunk per event, then ``data: [DONE]``.

    Generation stops as soon as the client leaves (checked between chunks, and on the
    cancellation Starlette raises here when it sees the disconnect first).
    """
    completion_tokens = 0
    event: StreamEvent | Exception | None = first
    try:
        while isinstance(event, StreamEvent):
            completion_tokens += event.completion_tokens
            yield sse(chunk(event))
            if await is_disconnected():
                return
            event = await next_event(job, deadline)
        if isinstance(event, Exception):  # headers are sent: the error travels as an event
            status = 400 if isinstance(event, EdgeZooError) else 500
            error = event if isinstance(event, ApiError) else ApiError(status, str(event))
            yield sse(error.body())
            return
        if usage_chunk is not None:
            yield sse(usage_chunk(completion_tokens))
        yield sse("[DONE]")
    except asyncio.TimeoutError:
        yield sse(timed_out(timeout_s).body())
    finally:
        batcher.cancel(job)


# ---------------------------------------------------------------------- the app ------------


def authorized(header: str | None, api_key: str | None) -> bool:
    """``Authorization: Bearer <api_key>``, compared in constant time."""
    if not api_key:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        token.strip().encode(), api_key.encode()
    )


def create_app(
    model: Any,
    *,
    model_name: str,
    api_key: str | None = None,
    max_queue: int = 64,
    max_batch: int = 8,
    batch_wait_ms: float = 5,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int | None = None,
    request_timeout_s: float = 60,
    max_body_bytes: int = 1_000_000,
    shutdown_timeout_s: float = 30,
) -> "FastAPI":
    """The FastAPI app serving ``model`` (a ``LanguageModel`` or a ``Classifier``).

    Run it with uvicorn (``serve`` does) or test it with ``fastapi.testclient.TestClient``
    used as a context manager: the worker starts and stops with the app's lifespan.
    """
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.exceptions import HTTPException

    if max_batch < 1 or max_queue < 1:
        raise ConfigError(f"max_batch={max_batch}, max_queue={max_queue}: both must be >= 1.")
    is_lm = hasattr(model, "generate")
    metrics = Metrics()
    started = int(time.time())
    batchers: list[Batcher] = []  # the running one, once the lifespan has started

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(
            model,
            metrics,
            max_batch=max_batch,
            max_queue=max_queue,
            batch_wait_s=batch_wait_ms / 1000,
        )
        batchers[:] = [batcher]
        app.state.batcher = batcher
        batcher.start()
        yield
        await batcher.stop(shutdown_timeout_s)

    def running() -> Batcher:
        if not batchers:
            raise overloaded("server is starting; retry shortly.")
        return batchers[0]

    app = FastAPI(
        title="edgezoo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def error_response(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(EdgeZooError)
    async def on_user_error(request: Request, error: EdgeZooError) -> JSONResponse:
        return error_response(ApiError(400, str(error)))  # its message names the fix

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), headers=error.headers))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, error: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {type(error).__name__}: {error}"))

    async def require_key(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), api_key):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_key)]

    @app.get("/health")
    async def health() -> JSONResponse:
        """Open without a key, for load balancers: 503 once shutting down (or not started)."""
        ready = bool(batchers) and not batchers[0].closed
        body = {"status": "ok" if ready else "unavailable", "model": model_name}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=guarded)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(model, model_name, started)]}

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request) -> Any:
        if not is_lm:
            raise ApiError(400, f"{model_name!r} is a classifier: use POST /v1/classify.")
        body = await read_json(request, max_body_bytes)
        req = parse_completion(body, model_name=model_name, max_tokens_limit=max_tokens_limit)
        lengths = prompt_lengths(model, req.prompts, max_prompt_tokens)
        job = Job(req.prompts, req.params, prompt_tokens=sum(lengths), stream=req.stream)
        deadline = asyncio.get_running_loop().time() + request_timeout_s
        batcher = running()
        batcher.submit(job)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
        }
        if req.stream:
            return await start_stream(
                batcher, job, head, request, deadline, request_timeout_s, req.include_usage
            )
        generations = await wait_result(batcher, job, request_timeout_s)
        return completion_body(head, generations)

    @app.post("/v1/classify", dependencies=guarded)
    async def classify(request: Request) -> dict[str, Any]:
        if is_lm:
            raise ApiError(400, f"{model_name!r} is a language model: use POST /v1/completions.")
        texts = parse_classify(await read_json(request, max_body_bytes), model_name=model_name)
        job = Job(texts)
        batcher = running()
        batcher.submit(job)
        probs = await wait_result(batcher, job, request_timeout_s)
        return classify_body(model_name, model.labels, probs)

    return app


async def start_stream(
    batcher: Batcher,
    job: Job,
    head: dict[str, Any],
    request: "Request",
    deadline: float,
    timeout_s: float,
    include_usage: bool,
) -> Any:
    """Wait for the first event before answering, so a timeout or a bad request still gets a
    proper status code rather than an error inside a 200 stream."""
    from fastapi.responses import StreamingResponse

    try:
        first = await next_event(job, deadline)
    except asyncio.TimeoutError:
        batcher.cancel(job)
        raise timed_out(timeout_s) from None
    if not isinstance(first, StreamEvent):
        batcher.cancel(job)
        raise first or ApiError(500, "the model produced no output.")

    def chunk(event: StreamEvent) -> dict[str, Any]:
        reason = finish_reason(event.finish_reason)
        choice = {
            "text": event.text,
            "index": event.index,
            "logprobs": None,
            "finish_reason": reason,
        }
        return {**head, "choices": [choice]}

    def usage_chunk(completion_tokens: int) -> dict[str, Any]:
        return {**head, "choices": [], "usage": usage(job.prompt_tokens, completion_tokens)}

    events = sse_stream(
        batcher,
        job,
        first,
        chunk=chunk,
        usage_chunk=usage_chunk if include_usage else None,
        is_disconnected=request.is_disconnected,
        deadline=deadline,
        timeout_s=timeout_s,
    )
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


# ---------------------------------------------------------------------- serve + CLI --------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another hostname: it may resolve to a public address


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to put an unauthenticated model on the network."""
    if not api_key and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host!r} without an API key: anyone who can reach it could use "
            "the model. Pass --api-key KEY (or set EDGEZOO_API_KEY), or bind --host 127.0.0.1."
        )


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    variant: str = "fp32",
    threads: int = 0,
    api_key: str | None = None,
    *,
    model_name: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int | None = None,
    request_timeout_s: float = 60,
    log_level: str = "info",
) -> None:
    """Load ``model_dir`` and serve it until Ctrl-C / SIGTERM (then finish in-flight work)."""
    check_bind(host, api_key)  # before the slow load
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ConfigError(
            f"`edgezoo serve` needs {e.name}, which is not installed: pip install 'edgezoo[serve]'."
        ) from e

    from runtime.api import load

    model = load(model_dir, backend=backend, variant=variant, threads=threads, max_batch=max_batch)
    name = model_name or Path(model_dir).resolve().name
    print(f"edgezoo serve: {name} [{model.backend} · {model.variant}] on http://{host}:{port}")
    app = create_app(
        model,
        model_name=name,
        api_key=api_key,
        max_queue=max_queue,
        max_batch=max_batch,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        request_timeout_s=request_timeout_s,
        shutdown_timeout_s=request_timeout_s,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(request_timeout_s),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    serve(
        args.model_dir,
        host=args.host,
        port=args.port,
        backend=args.backend,
        variant=args.variant,
        threads=args.threads,
        api_key=args.api_key,
        model_name=args.model_name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.timeout,
        log_level=args.log_level,
    )
    return 0


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``edgezoo serve`` to the CLI's subparsers (its ``fn`` is ``cmd_serve``)."""
    from runtime.api import add_runtime_arguments

    s = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible /v1/completions, /v1/classify, /metrics)",
        description="Serve an exported model over HTTP: OpenAI-compatible POST /v1/completions "
        "(streaming too) for LMs, POST /v1/classify for classifiers, GET /v1/models, /health "
        "and Prometheus /metrics. Concurrent requests are batched dynamically.",
    )
    s.add_argument("model_dir", help="exported model dir (after `edgezoo export`)")
    add_runtime_arguments(s)
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; any other address needs --api-key)",
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--api-key",
        default=os.environ.get("EDGEZOO_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(default: $EDGEZOO_API_KEY; prefer the variable, flags show up in `ps`)",
    )
    s.add_argument(
        "--model-name", help="model id clients send and /v1/models lists (default: the dir's name)"
    )
    s.add_argument(
        "--max-batch", type=int, default=8, help="most prompts per batched model call (default 8)"
    )
    s.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait; beyond this the server answers 503 + Retry-After (default 64)",
    )
    s.add_argument(
        "--max-tokens-limit",
        type=int,
        help="largest max_tokens a request may ask for (default: no limit)",
    )
    s.add_argument(
        "--max-prompt-tokens",
        type=int,
        help="longest prompt in tokens (default: the model's context)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a request may take, queueing included, before a 504 (default 60)",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info: one line per request)",
    )
    s.set_defaults(fn=cmd_serve)
    return s
