"""OpenAI's chat wire format: ``/v1/chat/completions`` requests and their response bodies
(``chat.completion``, and ``chat.completion.chunk`` events when streaming).

The messages become one prompt through the model's chat template (``runtime.chat_template``);
sampling fields are checked exactly as for completions (``protocol.parse_sampling``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgezoo.runtime.protocol import (
    ApiError,
    _text,
    check_model,
    finish_reason,
    parse_n,
    parse_sampling,
    parse_stream,
    refuse_unsupported,
    usage,
)
from edgezoo.runtime.sampling import MAX_LOGPROBS, SamplingParams

ROLES = ("system", "developer", "user", "assistant")
# Chat fields we do not implement, with the value that means "off" (anything else: a 400).
UNSUPPORTED_CHAT = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "audio": None,
    "modalities": None,
    "prediction": None,
}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]  # role + content (text), as the template expects
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    n: int = 1


def parse_chat(
    body: dict[str, Any],
    *,
    model_name: str,
    max_tokens_limit: int | None = None,
    max_prompts: int | None = None,
) -> ChatRequest:
    """Check a chat body field by field; errors name the field and the fix."""
    check_model(body, model_name)
    refuse_unsupported(body, UNSUPPORTED_CHAT)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(
            400,
            "response_format other than {'type': 'text'} (JSON mode, schemas) is not supported; "
            "leave it out.",
            param="response_format",
        )
    logprobs = _chat_logprobs(body)
    field = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    params = parse_sampling(
        body, max_tokens_limit=max_tokens_limit, logprobs=logprobs, max_tokens_field=field
    )
    stream, include_usage = parse_stream(body)
    if stream and logprobs is not None:
        raise ApiError(
            400, "logprobs are not streamed; use stream=false to get them.", param="logprobs"
        )
    return ChatRequest(
        messages=parse_messages(body.get("messages")),
        params=params,
        stream=stream,
        include_usage=include_usage,
        n=parse_n(body, 1, max_prompts),
    )


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """``logprobs: true`` (+ ``top_logprobs`` 0..20) -> how many alternatives to record."""
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ApiError(
            400, f"logprobs must be true or false, got {logprobs!r:.80}.", param="logprobs"
        )
    if top is not None and (
        isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_LOGPROBS
    ):
        raise ApiError(
            400,
            f"top_logprobs must be an integer from 0 to {MAX_LOGPROBS}, got {top!r:.80}.",
            param="top_logprobs",
        )
    if top and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true; set both.", param="top_logprobs")
    return (top or 0) if logprobs else None


def parse_messages(value: Any) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` with text content (a string, or text parts joined)."""
    if not isinstance(value, list) or not value:
        raise ApiError(
            400,
            'messages must be a non-empty list of {"role": ..., "content": ...} objects.',
            param="messages",
        )
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r:.80}"
                " (tool calls are not supported).",
                param="messages",
            )
        content = _content(message.get("content"), i)
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _content(value: Any, i: int) -> str:
    if isinstance(value, str):
        return _text(value, "messages")
    if value is None:
        return ""  # an assistant turn that only called tools: no text
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return _text("".join(p["text"] for p in value), "messages")
    raise ApiError(
        400,
        f"messages[{i}].content must be a string or a list of text parts "
        '({"type": "text", "text": ...}); images and audio are not supported.',
        param="messages",
    )


# ---------------------------------------------------------------------- responses ----------


def chat_body(
    head: dict[str, Any],
    generations: list[Any],
    *,
    prompt_tokens: int,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion``: one assistant message per choice."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": g.text, "refusal": None},
            "logprobs": logprobs[i] if logprobs else None,
            "finish_reason": finish_reason(g.finish_reason),
        }
        for i, g in enumerate(generations)
    ]
    completion = sum(len(g.token_ids) for g in generations)
    return {**head, "choices": choices, "usage": usage(prompt_tokens, completion)}


def chat_chunk(
    head: dict[str, Any], index: int, text: str, reason: str | None, first: bool
) -> dict:
    """A ``chat.completion.chunk``: the first for a choice carries the role, the last its
    finish reason (OpenAI's delta shapes; clients concatenate ``delta.content``)."""
    delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
    if text and not first:
        delta["content"] = text
    choice = {
        "index": index,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason(reason),
    }
    return {**head, "choices": [choice]}
