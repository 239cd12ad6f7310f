"""``POST /v1/embeddings`` for encoder models: OpenAI's request and response shapes over
``Classifier.embed`` (masked mean of the last hidden states, unit length).

The official client asks for ``encoding_format="base64"`` unless told otherwise (float32
little-endian bytes, which it decodes), so both formats are served. Embedding calls run in
a thread, one at a time; ONNX Runtime sessions are safe to run from two threads, so a
classify batch in the worker may overlap one. Imports fastapi: only ``create_app`` imports
this module. No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.params import Depends as DependsParam

from edgezoo.runtime.openapi_schema import json_body
from edgezoo.runtime.protocol import (
    ApiError,
    check_model,
    parse_classify,
    read_json,
    timed_out,
    usage,
)
from edgezoo.runtime.server_routes import ServerContext

EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
    },
    "required": ["input"],
}


def parse_embeddings(
    body: dict[str, Any], *, model_name: str, hidden: int
) -> tuple[list[str], str]:
    """``(texts, encoding_format)``; ``dimensions`` is accepted only as the model's own size."""
    check_model(body, model_name)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(
            400,
            f"encoding_format must be 'float' or 'base64', got {fmt!r:.80}.",
            param="encoding_format",
        )
    dims = body.get("dimensions")
    if dims is not None and dims != hidden:
        raise ApiError(
            400,
            f"dimensions={dims!r:.80}: this model's embeddings have {hidden} dimensions and "
            "cannot be shortened; leave dimensions out.",
            param="dimensions",
        )
    return parse_classify({"input": body.get("input")}, model_name=model_name), fmt


def embeddings_body(
    model_name: str, vectors: np.ndarray, prompt_tokens: int, fmt: str
) -> dict[str, Any]:
    def encoded(v: np.ndarray) -> Any:
        if fmt == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        return v.astype(float).tolist()

    data = [
        {"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)
    ]
    tokens = usage(prompt_tokens, 0)
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": tokens["prompt_tokens"], "total_tokens": tokens["total_tokens"]},
    }


def embeddings_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """POST /v1/embeddings: encoder models only; a language model answers 400."""
    router = APIRouter(dependencies=guarded)
    one_at_a_time = asyncio.Lock()

    @router.post("/v1/embeddings", openapi_extra=json_body(EMBEDDINGS_REQUEST))
    async def embeddings(request: Request) -> dict[str, Any]:
        if ctx.is_lm:
            raise ApiError(
                400,
                f"{ctx.model_name!r} is a language model; embeddings need an encoder model "
                "(a BERT-style classifier dir): serve one of those for POST /v1/embeddings.",
            )
        ctx.model.check_can_embed()  # a ConfigError (400) that says to re-export
        hidden = int(ctx.model.config.get("hidden_size", 0))
        body = await read_json(request, ctx.max_body_bytes)
        texts, fmt = parse_embeddings(body, model_name=ctx.model_name, hidden=hidden)
        if len(texts) > ctx.max_queue:
            raise ApiError(
                400,
                f"{len(texts)} inputs in one request; this server embeds at most "
                f"{ctx.max_queue} per request: split them over several requests.",
                param="input",
            )
        async with one_at_a_time:
            encoded = await asyncio.to_thread(ctx.model.encode, texts)
            try:
                vectors = await asyncio.wait_for(
                    asyncio.to_thread(ctx.model.embed_ids, encoded), ctx.request_timeout_s
                )
            except asyncio.TimeoutError:
                raise timed_out(ctx.request_timeout_s) from None
        return embeddings_body(ctx.model_name, vectors, sum(map(len, encoded)), fmt)

    return router
