"""An OpenAI-compatible HTTP server over ``runtime.load``: completions, classify, metrics.

    edgezoo serve runs/lm-small --port 8000
    curl localhost:8000/v1/completions -d '{"prompt": "def main():", "max_tokens": 32}'

The app and the CLI. The endpoints, auth and lifespan live in ``runtime.server_routes``
(chat, /tokenize and /detokenize in ``runtime.server_chat``), the wire format in
``runtime.protocol`` (+ ``protocol_chat``, ``protocol_tokens``), dynamic batching in ``runtime.batcher``,
Prometheus metrics in ``runtime.server_metrics``.

fastapi, uvicorn and prometheus_client (the ``serve`` extra) are imported only when a
server is built (``server_routes`` imports fastapi at top level, so it is imported inside
``create_app``), so importing this module (the CLI does, for ``--help``) costs nothing.
This file has no ``from __future__ import annotations`` on purpose: FastAPI reads endpoint
annotations, and ``create_app``'s return annotation names ``FastAPI`` only as a string.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError
from edgezoo.runtime.engine import DEFAULT_PREFILL_CHUNK
from edgezoo.runtime.host_guard import LoopbackHostMiddleware, is_loopback
from edgezoo.runtime.server_metrics import Metrics

if TYPE_CHECKING:
    from fastapi import FastAPI


DEFAULT_MAX_TOKENS_LIMIT = 1024  # max_tokens a request may ask for, unless the context is less

# ---------------------------------------------------------------------- the app ------------


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
    max_prompts: int | None = None,
    openapi_url: str | None = None,
    batching: str = "auto",
    parallel: int | None = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> "FastAPI":
    """The FastAPI app serving ``model`` (a ``LanguageModel`` or a ``Classifier``).

    Run it with uvicorn (``serve`` does) or test it with ``fastapi.testclient.TestClient``
    used as a context manager: the worker starts and stops with the app's lifespan.
    ``max_prompts`` (default ``max_batch``) caps the prompts of one request, so that one
    request cannot hold the worker for many batches. ``openapi_url`` publishes the OpenAPI
    document there (off by default: tests fuzz the API from it).
    ``batching``: "continuous" runs language models on the slot engine (``parallel`` slots,
    default ``max_batch``; prompts prefilled ``prefill_chunk`` tokens at a time), "static"
    on the batch-at-once worker, "auto" (default) takes continuous where the model allows
    it (the gqa graph on ort-cpu).
    The routes live in ``runtime.server_routes``, imported here so that importing this
    module never imports fastapi.
    """
    from edgezoo.runtime import server_chat, server_embeddings
    from edgezoo.runtime import server_routes as routes

    if max_batch < 1 or max_queue < 1:
        raise ConfigError(f"max_batch={max_batch}, max_queue={max_queue}: both must be >= 1.")
    ctx = routes.ServerContext(
        model,
        model_name=model_name,
        metrics=Metrics(),
        max_queue=max_queue,
        max_batch=max_batch,
        batch_wait_s=batch_wait_ms / 1000,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        request_timeout_s=request_timeout_s,
        max_body_bytes=max_body_bytes,
        shutdown_timeout_s=shutdown_timeout_s,
        max_prompts=max_prompts or max_batch,
        batching=batching,
        parallel=parallel,
        prefill_chunk=prefill_chunk,
    )
    app = routes.base_app(ctx, openapi_url)
    app.state.context = ctx  # its limits, for whoever holds the app (tests, embedders)
    if not api_key:
        app.add_middleware(LoopbackHostMiddleware)  # outermost: DNS rebinding gets nothing
    guarded = routes.key_guard(api_key)
    app.include_router(routes.health_router(ctx, guarded))
    app.include_router(routes.openai_router(ctx, guarded))
    app.include_router(routes.classify_router(ctx, guarded))
    app.include_router(server_chat.chat_router(ctx, guarded))
    app.include_router(server_chat.tokens_router(ctx, guarded))
    app.include_router(server_embeddings.embeddings_router(ctx, guarded))
    return app


# ---------------------------------------------------------------------- serve + CLI --------


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
    batching: str = "auto",
    parallel: int | None = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    draft: str | Path | None = None,
    draft_variant: str = "auto",
    draft_threads: int | None = None,
    draft_tokens: int = 4,
    max_draft_tokens: int | None = None,
    lookup_corpus: str | Path | None = None,
) -> None:
    """Load ``model_dir`` and serve it until Ctrl-C / SIGTERM (then finish in-flight work).

    ``draft`` (a draft model dir or "prompt-lookup"; ``draft_variant``: the draft dir's
    variant; ``draft_threads``: its threads, see ``runtime.load``) decodes speculatively, on static batching: lower latency for a few clients at
    a time; ``lookup_corpus`` adds guesses from a corpus to prompt lookup (see
    ``runtime.load``)."""
    check_bind(host, api_key)  # before the slow load
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ConfigError(
            f"`edgezoo serve` needs {e.name}, which is not installed: pip install 'edgezoo[serve]'."
        ) from e

    from edgezoo.runtime.api import load

    model = load(
        model_dir,
        backend=backend,
        variant=variant,
        threads=threads,
        max_batch=max_batch,
        draft=draft,
        draft_variant=draft_variant,
        draft_threads=draft_threads,
        draft_tokens=draft_tokens,
        max_draft_tokens=max_draft_tokens,
        lookup_corpus=lookup_corpus,
        # several requests decode together: of rival int8 graphs, the batch step's fastest
        expected_batch=parallel or max_batch,
    )
    name = model_name or Path(model_dir).resolve().name
    print(f"edgezoo serve: {name} [{model.backend} · {model.variant}] on http://{host}:{port}")
    if hasattr(model, "context"):  # a language model: no request may cost more than this
        max_prompt_tokens = max_prompt_tokens or getattr(model, "max_prompt_len", model.context - 1)
        max_tokens_limit = max_tokens_limit or min(model.context, DEFAULT_MAX_TOKENS_LIMIT)
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
        batching=batching,
        parallel=parallel,
        prefill_chunk=prefill_chunk,
    )
    mode = "continuous" if app.state.context.continuous else "static"
    spec = ""
    if draft:
        length = model.length()
        guesses = f"{length.start}" if length.fixed else f"{length.start} → {length.most}"
        spec = f", speculative ({model.proposer_name}, {guesses} guesses per call)"
    print(f"edgezoo serve: {mode} batching{spec}", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(request_timeout_s),
        limit_concurrency=connection_limit(max_queue, max(parallel or 0, max_batch)),
    )


def connection_limit(max_queue: int, max_batch: int) -> int:
    """Open connections uvicorn serves before answering 503 at once: every request the queue
    and the running batch can hold, plus room for /health and /metrics. A flood of idle or
    slow connections then costs a refusal, not the server's memory."""
    return max_queue + max_batch + 32


def cmd_serve(args: argparse.Namespace) -> int:
    from edgezoo.runtime.cli import draft_of

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
        batching=args.batching,
        parallel=args.parallel,
        prefill_chunk=args.prefill_chunk,
        draft=draft_of(args),
        draft_variant=args.draft_variant,
        draft_threads=args.draft_threads,
        draft_tokens=args.draft_tokens,
        max_draft_tokens=args.max_draft_tokens,
        lookup_corpus=args.lookup_corpus,
    )
    return 0
