"""The pieces ``server.create_app`` assembles: per-app context, lifespan, error handlers,
the API-key guard and one ``APIRouter`` per endpoint family.

This module imports fastapi at top level, so only ``create_app`` imports it (lazily): the
``server`` module itself must stay importable without the ``serve`` extra. Like ``server``,
it has no ``from __future__ import annotations``: FastAPI reads the endpoint annotations.
"""

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from edgezoo.errors import ConfigError, EdgeZooError
from edgezoo.runtime.batcher import (
    Batcher,
    Job,
    StreamEvent,
    cancelled_unless_answered,
    next_event,
    wait_result,
)
from edgezoo.runtime.continuous import ContinuousBatcher
from edgezoo.runtime.engine import DEFAULT_PREFILL_CHUNK, supports_engine
from edgezoo.runtime.openapi_schema import CLASSIFY_REQUEST, COMPLETION_REQUEST, json_body
from edgezoo.runtime.protocol import (
    ApiError,
    check_model,
    classify_body,
    completion_body,
    finish_reason,
    model_card,
    overloaded,
    parse_classify,
    parse_completion,
    read_json,
    sse,
    timed_out,
    usage,
)
from edgezoo.runtime.protocol_tokens import (
    check_prompt_ids,
    completion_logprobs,
    echo_texts,
    encode_prompts,
)
from edgezoo.runtime.server_metrics import Metrics, MetricsMiddleware

log = logging.getLogger("edgezoo.serve")


@dataclass
class ServerContext:
    """What every endpoint of one app shares: the model, its limits and (once the lifespan
    has started) the running batcher. One per app, so two apps in a process never mix."""

    model: Any
    model_name: str
    metrics: Metrics
    max_queue: int
    max_batch: int
    batch_wait_s: float
    max_prompt_tokens: int | None
    max_tokens_limit: int | None
    request_timeout_s: float
    max_body_bytes: int
    shutdown_timeout_s: float
    max_prompts: int  # prompts one request may carry
    batching: str = "auto"  # "continuous" (slots, per-step joins), "static", or "auto"
    parallel: int | None = None  # continuous batching's slots (default: max_batch)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    started: int = field(default_factory=lambda: int(time.time()))
    # Set by the lifespan; kept (closed) after shutdown.
    batcher: Batcher | ContinuousBatcher | None = None
    is_lm: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_lm = hasattr(self.model, "generate_ids")
        if self.batching not in ("auto", "continuous", "static"):
            raise ConfigError(f"batching={self.batching!r}: use 'auto', 'continuous' or 'static'.")
        if self.batching == "continuous" and getattr(self.model, "speculative", False):
            raise ConfigError(
                "a draft (--draft / --prompt-lookup) decodes one request at a time on static "
                "batching; drop --batching continuous (or the draft, for many clients at once)."
            )
        if self.batching == "continuous" and not (self.is_lm and supports_engine(self.model)):
            raise ConfigError(
                "continuous batching needs a language model on its gqa graph with the ort-cpu "
                "backend; use --batching static (or auto) for this model."
            )

    @property
    def continuous(self) -> bool:
        """Whether requests run on the continuous-batching engine."""
        return self.batching != "static" and self.is_lm and supports_engine(self.model)

    def running(self) -> Batcher | ContinuousBatcher:
        """The batcher, or a 503 for requests that race the lifespan's start."""
        if self.batcher is None:
            raise overloaded("server is starting; retry shortly.")
        return self.batcher


def make_lifespan(ctx: ServerContext) -> Callable[[FastAPI], Any]:
    """Start the batcher with the app and drain it on shutdown, so the worker's life matches
    uvicorn's (and a ``TestClient`` context's)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.continuous:
            batcher = ContinuousBatcher(
                ctx.model,
                ctx.metrics,
                slots=ctx.parallel or ctx.max_batch,
                max_queue=ctx.max_queue,
                prefill_chunk=ctx.prefill_chunk,
            )
        else:
            batcher = Batcher(
                ctx.model,
                ctx.metrics,
                max_batch=ctx.max_batch,
                max_queue=ctx.max_queue,
                batch_wait_s=ctx.batch_wait_s,
            )
        ctx.batcher = batcher
        app.state.batcher = batcher
        batcher.start()
        yield
        await batcher.stop(ctx.shutdown_timeout_s)

    return lifespan


def base_app(ctx: ServerContext, openapi_url: str | None = None) -> FastAPI:
    """The app without routes: lifespan, metrics middleware and error handlers. No docs
    pages, and no OpenAPI document unless asked for (tests fuzz the API from it): they would
    be unauthenticated and describe nothing an OpenAI client needs."""
    app = FastAPI(
        title="edgezoo",
        lifespan=make_lifespan(ctx),
        docs_url=None,
        redoc_url=None,
        openapi_url=openapi_url,
    )
    app.state.metrics = ctx.metrics
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)
    add_error_handlers(app)
    return app


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every failure answers with the OpenAI error body, whatever raised it."""

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
        # The details (paths, library internals) go to the server's log, never to the client;
        # the request id ties the two together.
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s failed", request_id, exc_info=error)
        return error_response(
            ApiError(
                500,
                f"internal error (request id {request_id}); the server log has the details.",
                headers={"X-Request-Id": request_id},
            )
        )


def authorized(header: str | None, api_key: str | None) -> bool:
    """``Authorization: Bearer <api_key>``, compared in constant time."""
    if not api_key:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        token.strip().encode(), api_key.encode()
    )


def key_guard(api_key: str | None) -> list[DependsParam]:
    """Route dependencies that demand the API key (a no-op without one)."""

    async def require_key(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), api_key):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Depends(require_key)]


# ---------------------------------------------------------------------- routers ------------


def health_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """/health (open, for load balancers) and /metrics (guarded: it reveals traffic)."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        """Open without a key, for load balancers: 503 once shutting down, before the
        worker started, or when the worker task has died (nothing would answer)."""
        batcher = ctx.batcher
        worker = batcher.task if batcher is not None else None
        alive = worker is not None and not worker.done()
        ready = alive and not batcher.closed
        body = {
            "status": "ok" if ready else "unavailable",
            "model": ctx.model_name,
            "worker": "running" if alive else "stopped",
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", dependencies=guarded)
    async def prometheus_metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def openai_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """The OpenAI-compatible surface: /v1/models and /v1/completions (plain or SSE)."""
    router = APIRouter(dependencies=guarded)

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(ctx.model, ctx.model_name, ctx.started)]}

    @router.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        check_model({"model": model_id}, ctx.model_name)  # another id: 404 model_not_found
        return model_card(ctx.model, ctx.model_name, ctx.started)

    @router.post("/v1/completions", openapi_extra=json_body(COMPLETION_REQUEST))
    async def completions(request: Request) -> Any:
        if not ctx.is_lm:
            raise ApiError(400, f"{ctx.model_name!r} is a classifier: use POST /v1/classify.")
        body = await read_json(request, ctx.max_body_bytes)
        req = parse_completion(
            body,
            model_name=ctx.model_name,
            max_tokens_limit=ctx.max_tokens_limit,
            max_prompts=ctx.max_prompts,
        )
        if req.prompt_ids is not None:
            prompt_ids = check_prompt_ids(ctx.model, req.prompt_ids, ctx.max_prompt_tokens)
        else:  # off the event loop: tokenizing a long prompt would stall every stream
            prompt_ids = await asyncio.to_thread(
                encode_prompts, ctx.model, req.prompts, ctx.max_prompt_tokens
            )
        # n choices = each prompt n times. A seeded request's copies differ and it repeats
        # exactly: static batching runs it alone on one generator drawing row by row, the
        # continuous engine gives its rows seeds seed, seed + 1, ….
        job = Job(
            [ids for ids in prompt_ids for _ in range(req.n)],
            req.params,
            prompt_tokens=sum(map(len, prompt_ids)),  # billed once per prompt, as OpenAI
            stream=req.stream,
            longest_prompt=max(map(len, prompt_ids)),
        )
        prefixes = None
        if req.echo:
            prefixes = echo_texts(ctx.model.tokenizer, req.prompts, prompt_ids, req.n)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": ctx.model_name,
        }
        answer = await run_job(
            ctx, request, job, head, completion_chunk(head, prefixes), req.include_usage
        )
        if job.stream:
            return answer
        generations = answer
        logprobs = None
        if req.params.logprobs is not None:
            logprobs = [completion_logprobs(ctx.model.tokenizer, g) for g in generations]
        return completion_body(
            head, generations, prompt_tokens=job.prompt_tokens, prefixes=prefixes, logprobs=logprobs
        )

    return router


def classify_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """/v1/classify: edgezoo's own endpoint for classifiers (OpenAI has none)."""
    router = APIRouter(dependencies=guarded)

    @router.post("/v1/classify", openapi_extra=json_body(CLASSIFY_REQUEST))
    async def classify(request: Request) -> dict[str, Any]:
        if ctx.is_lm:
            raise ApiError(
                400, f"{ctx.model_name!r} is a language model: use POST /v1/completions."
            )
        body = await read_json(request, ctx.max_body_bytes)
        texts = parse_classify(body, model_name=ctx.model_name)
        job = Job(texts)
        batcher = ctx.running()
        batcher.submit(job)
        probs = await wait_result(batcher, job, ctx.request_timeout_s)
        return classify_body(ctx.model_name, ctx.model.labels, probs)

    return router


# ---------------------------------------------------------------------- streaming ----------


def completion_chunk(
    head: dict[str, Any], prefixes: list[str] | None = None
) -> Callable[[StreamEvent], dict[str, Any]]:
    """A ``text_completion`` chunk per event; with ``prefixes`` (echo) each choice's first
    chunk starts with its prompt."""
    echoed: set[int] = set()

    def chunk(event: StreamEvent) -> dict[str, Any]:
        text = event.text
        if prefixes is not None and event.index not in echoed:
            echoed.add(event.index)
            text = prefixes[event.index] + text
        reason = finish_reason(event.finish_reason)
        choice = {"text": text, "index": event.index, "logprobs": None, "finish_reason": reason}
        return {**head, "choices": [choice]}

    return chunk


async def run_job(
    ctx: ServerContext,
    request: Request,
    job: Job,
    head: dict[str, Any],
    chunk: Callable[[StreamEvent], dict[str, Any]],
    include_usage: bool,
) -> Any:
    """Submit a language-model job under the request's timeout: a streaming job's SSE
    response, else the job's generations (the caller shapes the body)."""
    timeout_s = ctx.request_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s
    batcher = ctx.running()
    batcher.submit(job)
    if job.stream:
        return await start_stream(
            batcher, job, head, request, deadline, timeout_s, include_usage, chunk=chunk
        )
    return await wait_result(batcher, job, timeout_s)


async def start_stream(
    batcher: Batcher,
    job: Job,
    head: dict[str, Any],
    request: Request,
    deadline: float,
    timeout_s: float,
    include_usage: bool,
    *,
    chunk: Callable[[StreamEvent], dict[str, Any]] | None = None,
) -> Any:
    """Wait for the first event before answering, so a timeout or a bad request still gets a
    proper status code rather than an error inside a 200 stream. ``chunk`` turns an event
    into a body (default: a completions chunk; chat passes its own)."""
    with cancelled_unless_answered(batcher, job, timeout_s):
        first = await next_event(job, deadline)
    if not isinstance(first, StreamEvent):
        batcher.cancel(job)
        raise first or ApiError(500, "the model produced no output.")
    chunk = chunk or completion_chunk(head)

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

    The job is cancelled as soon as the client leaves (checked between chunks, and on the
    cancellation Starlette raises here when it sees the disconnect first): it gets no more
    tokens, and its batch stops once no client in it is left.
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
