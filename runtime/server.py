"""An OpenAI-compatible HTTP server over ``runtime.load``: completions, classify, metrics.

    edgezoo serve runs/lm-small --port 8000
    curl localhost:8000/v1/completions -d '{"prompt": "def main():", "max_tokens": 32}'

The app and the CLI. The wire format lives in ``runtime.protocol``, dynamic batching in
``runtime.batcher``, Prometheus metrics in ``runtime.server_metrics``.

fastapi, uvicorn and prometheus_client (the ``serve`` extra) are imported only when a
server is built, so importing this module (the CLI does, for ``--help``) costs nothing.
This file has no ``from __future__ import annotations`` on purpose: FastAPI reads the
endpoint annotations, and the endpoints' ``Request`` is imported inside ``create_app``.
"""

import argparse
import asyncio
import contextlib
import ipaddress
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError, EdgeZooError
from runtime.batcher import (
    Batcher,
    Job,
    StreamEvent,
    cancelled_unless_answered,
    next_event,
    wait_result,
)
from runtime.protocol import (
    ApiError,
    classify_body,
    completion_body,
    finish_reason,
    model_card,
    overloaded,
    parse_classify,
    parse_completion,
    prompt_lengths,
    read_json,
    sse,
    timed_out,
    usage,
)
from runtime.server_metrics import Metrics, MetricsMiddleware

if TYPE_CHECKING:
    from fastapi import FastAPI, Request


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
        job = Job(
            req.prompts,
            req.params,
            prompt_tokens=sum(lengths),
            stream=req.stream,
            longest_prompt=max(lengths),
        )
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

    with cancelled_unless_answered(batcher, job, timeout_s):
        first = await next_event(job, deadline)
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
