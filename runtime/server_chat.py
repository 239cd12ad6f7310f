"""``/v1/chat/completions``, ``/tokenize`` and ``/detokenize``: routers ``server.create_app``
includes beside ``server_routes``' ones, sharing its context, batcher and streaming.

Chat renders the messages with the model's chat template (from ``tokenizer_config.json``,
see ``edgezoo.chat_config``) and then runs exactly like a completion of that prompt.
Imports fastapi at top level: only ``create_app`` imports this module. No
``from __future__ import annotations``: FastAPI reads the endpoint annotations.
"""

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends as DependsParam

from edgezoo.runtime.batcher import Job, StreamEvent
from edgezoo.runtime.chat_template import render_chat
from edgezoo.runtime.openapi_schema import (
    CHAT_REQUEST,
    DETOKENIZE_REQUEST,
    TOKENIZE_REQUEST,
    json_body,
)
from edgezoo.runtime.protocol import ApiError, read_json
from edgezoo.runtime.protocol_chat import ChatRequest, chat_body, chat_chunk, parse_chat
from edgezoo.runtime.protocol_tokens import (
    chat_logprobs,
    detokenize_body,
    encode_prompts,
    parse_tokenize,
    tokenize_body,
)
from edgezoo.runtime.server_routes import ServerContext, run_job

NO_TEMPLATE = (
    "model {name!r} has no chat template, so it cannot answer chat requests: add a Jinja "
    "'chat_template' to its tokenizer_config.json (re-exporting a zoo language model adds the "
    "default one), or use POST /v1/completions with a prompt you format yourself."
)
NOT_CHAT = (
    "model {name!r} is an encoder-decoder (seq2seq) model: it maps a source text to a target "
    "and has no chat format. Use POST /v1/completions with the source text as the prompt."
)


def _chat_prompt_ids(ctx: ServerContext, req: ChatRequest) -> list[list[int]]:
    """Render the messages and tokenize the prompt (without another ``<s>``: the template
    writes its own). Runs off the event loop."""
    chat = getattr(ctx.model, "chat_config", None)
    if chat is None:
        raise ApiError(400, NO_TEMPLATE.format(name=ctx.model_name), param="messages")
    prompt = render_chat(chat, req.messages)
    if not prompt:
        raise ApiError(400, "the chat template rendered an empty prompt.", param="messages")
    return encode_prompts(ctx.model, [prompt], ctx.max_prompt_tokens, special_tokens=False)


def _chat_chunks(head: dict[str, Any]) -> Callable[[StreamEvent], dict[str, Any]]:
    started: set[int] = set()

    def chunk(event: StreamEvent) -> dict[str, Any]:
        first = event.index not in started
        started.add(event.index)
        return chat_chunk(head, event.index, event.text, event.finish_reason, first)

    return chunk


def chat_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """POST /v1/chat/completions (plain or SSE), OpenAI's chat shapes."""
    router = APIRouter(dependencies=guarded)

    @router.post("/v1/chat/completions", openapi_extra=json_body(CHAT_REQUEST))
    async def chat_completions(request: Request) -> Any:
        if not ctx.is_lm:
            raise ApiError(400, f"{ctx.model_name!r} is a classifier: use POST /v1/classify.")
        if getattr(ctx.model, "family", "lm") == "s2s":
            raise ApiError(400, NOT_CHAT.format(name=ctx.model_name))
        body = await read_json(request, ctx.max_body_bytes)
        req = parse_chat(
            body,
            model_name=ctx.model_name,
            max_tokens_limit=ctx.max_tokens_limit,
            max_prompts=ctx.max_prompts,
        )
        prompt_ids = await asyncio.to_thread(_chat_prompt_ids, ctx, req)
        job = Job(
            prompt_ids * req.n,
            req.params,
            prompt_tokens=len(prompt_ids[0]),
            stream=req.stream,
            longest_prompt=len(prompt_ids[0]),
        )
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if req.stream else "chat.completion",
            "created": int(time.time()),
            "model": ctx.model_name,
            "system_fingerprint": None,
        }
        answer = await run_job(ctx, request, job, head, _chat_chunks(head), req.include_usage)
        if job.stream:
            return answer
        generations = answer
        logprobs = None
        if req.params.logprobs is not None:
            logprobs = [chat_logprobs(ctx.model.tokenizer, g) for g in generations]
        return chat_body(head, generations, prompt_tokens=job.prompt_tokens, logprobs=logprobs)

    return router


def tokens_router(ctx: ServerContext, guarded: list[DependsParam]) -> APIRouter:
    """POST /tokenize and /detokenize (vLLM's shapes), guarded like the OpenAI routes."""
    router = APIRouter(dependencies=guarded)

    def require_tokenizer() -> None:
        if not hasattr(ctx.model, "tokenizer"):
            raise ApiError(400, f"{ctx.model_name!r} has no tokenizer to use.")

    @router.post("/tokenize", openapi_extra=json_body(TOKENIZE_REQUEST))
    async def tokenize(request: Request) -> dict[str, Any]:
        require_tokenizer()
        prompt, special = parse_tokenize(await read_json(request, ctx.max_body_bytes))
        max_chars = (ctx.max_prompt_tokens or ctx.model.context) * _max_token_chars(ctx.model)
        return await asyncio.to_thread(tokenize_body, ctx.model, prompt, special, max_chars)

    @router.post("/detokenize", openapi_extra=json_body(DETOKENIZE_REQUEST))
    async def detokenize(request: Request) -> dict[str, str]:
        require_tokenizer()
        return detokenize_body(ctx.model, await read_json(request, ctx.max_body_bytes))

    return router


def _max_token_chars(model: Any) -> int:
    """The longest vocabulary entry (``LanguageModel.max_token_chars``; computed for others)."""
    cached = getattr(model, "max_token_chars", None)
    if cached is not None:
        return cached
    return max(len(token) for token in model.tokenizer.get_vocab())
