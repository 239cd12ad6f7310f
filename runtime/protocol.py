"""The OpenAI-compatible wire format: request parsing with errors that name the fix, and
response bodies (JSON and server-sent events). Plain functions over dicts (reading the body
is the only one that touches the request), so the rules are easy to test and to read.
Prompts to token ids, echo and logprobs live in ``protocol_tokens``; chat in ``protocol_chat``.
"""

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError
from edgezoo.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from fastapi import Request

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
RETRY_AFTER_S = 1
MAX_STOP_STRINGS = 4  # OpenAI's limits: scanning stop strings costs every decode step
MAX_STOP_CHARS = 128
MAX_N = 8  # choices per prompt (each is a row of the batch: n costs n times the work)
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions
# OpenAI fields we do not implement, with the value that means "off": anything else is a 400,
# so a client never silently gets something other than what it asked for.
UNSUPPORTED = {
    "best_of": 1,
    "suffix": None,
    "logit_bias": None,
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
    prompts: list[str]  # the texts, or [] when the prompt came as token ids
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    prompt_ids: list[list[int]] | None = None  # token-id prompts (not tokenized again)
    n: int = 1  # choices per prompt: the request's rows are each prompt n times
    echo: bool = False  # prepend the prompt's text to each choice


def parse_completion(
    body: dict[str, Any],
    *,
    model_name: str,
    max_tokens_limit: int | None = None,
    max_prompts: int | None = None,
) -> CompletionRequest:
    """Check an OpenAI completions body field by field; errors name the field and the fix."""
    check_model(body, model_name)
    refuse_unsupported(body, UNSUPPORTED)
    logprobs = body.get("logprobs")
    if logprobs is not None and (
        isinstance(logprobs, bool)
        or not isinstance(logprobs, int)
        or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS
    ):
        raise ApiError(
            400,
            f"logprobs must be an integer from 0 to {MAX_COMPLETION_LOGPROBS}, got {logprobs!r:.80}.",
            param="logprobs",
        )
    params = parse_sampling(body, max_tokens_limit=max_tokens_limit, logprobs=logprobs)
    stream, include_usage = parse_stream(body)
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise ApiError(400, f"echo must be true or false, got {echo!r:.80}.", param="echo")
    if echo and logprobs is not None:
        raise ApiError(
            400,
            "echo with logprobs (prompt-token logprobs) is not supported; drop one of them.",
            param="echo",
        )
    if stream and logprobs is not None:
        raise ApiError(
            400, "logprobs are not streamed; use stream=false to get them.", param="logprobs"
        )
    texts, ids = parse_prompt(body.get("prompt"))
    n = parse_n(body, len(texts or ids or ()), max_prompts)
    return CompletionRequest(
        prompts=texts or [],
        params=params,
        stream=stream,
        include_usage=include_usage,
        prompt_ids=ids,
        n=n,
        echo=bool(echo),
    )


def refuse_unsupported(body: dict[str, Any], unsupported: dict[str, Any]) -> None:
    for name, off in unsupported.items():
        if body.get(name) not in (None, off):
            raise ApiError(
                400, f"{name} is not supported by this server; leave it out.", param=name
            )


def parse_sampling(
    body: dict[str, Any],
    *,
    max_tokens_limit: int | None,
    logprobs: int | None = None,
    max_tokens_field: str = "max_tokens",
) -> SamplingParams:
    """The sampling fields every generating endpoint shares, as checked ``SamplingParams``."""
    max_tokens = _number(body, max_tokens_field, DEFAULT_MAX_TOKENS, integer=True)
    if max_tokens < 1:
        raise ApiError(
            400,
            f"{max_tokens_field}={max_tokens} is invalid; use {max_tokens_field} >= 1.",
            param=max_tokens_field,
        )
    if max_tokens_limit is not None and max_tokens > max_tokens_limit:
        raise ApiError(
            400,
            f"{max_tokens_field}={max_tokens} is over this server's limit of {max_tokens_limit}; "
            f"ask for at most {max_tokens_limit} tokens.",
            param=max_tokens_field,
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ApiError(400, f"seed must be an integer >= 0, got {seed!r:.80}.", param="seed")
    params = SamplingParams(
        temperature=_number(body, "temperature", 1.0),
        top_k=_number(body, "top_k", 0, integer=True),
        top_p=_number(body, "top_p", 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0),
        presence_penalty=_number(body, "presence_penalty", 0.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0),
        max_new_tokens=max_tokens,
        stop=_stop_strings(body.get("stop")),
        seed=seed,
        logprobs=logprobs,
    )
    try:
        params.validate()
    except ConfigError as e:  # the runtime's message names the field and its range
        raise ApiError(400, str(e)) from None
    return params


def parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, stream_options.include_usage)``."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r:.80}.", param="stream")
    options = body.get("stream_options") or {}
    return bool(stream), isinstance(options, dict) and bool(options.get("include_usage"))


def parse_n(body: dict[str, Any], prompts: int, max_prompts: int | None) -> int:
    """``n`` choices per prompt; the rows (prompts × n) must fit the per-request cap."""
    n = _number(body, "n", 1, integer=True)
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"n={n} is invalid; use 1 <= n <= {MAX_N}.", param="n")
    if max_prompts is not None and prompts * n > max_prompts:
        raise ApiError(
            400,
            f"{prompts} prompts × n={n} = {prompts * n} choices in one request; this server "
            f"takes at most {max_prompts} per request: split them over several requests.",
            param="prompt" if n == 1 else "n",
        )
    return n


def parse_prompt(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """OpenAI's four prompt forms: a string, strings, token ids, or lists of token ids.
    Returns ``(texts, None)`` or ``(None, ids)``; ids are range-checked by the model."""
    if isinstance(value, list) and value and all(_is_id(v) for v in value):
        return None, [list(value)]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(row, list) and row and all(_is_id(v) for v in row) for row in value)
    ):
        return None, [list(row) for row in value]
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        return _strings(value, "prompt"), None
    raise ApiError(
        400,
        "prompt must be a string, a non-empty list of strings, a list of token ids or a "
        f"list of lists of token ids, got {value!r:.80}.",
        param="prompt",
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        return [_text(value, name)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [_text(v, name) for v in value]
    raise ApiError(
        400,
        f"{name} must be a string or a non-empty list of strings, got {value!r:.80}.",
        param=name,
    )


def _text(value: str, name: str) -> str:
    """JSON allows lone surrogates (``"\\ud800"``), which no tokenizer can encode: a 400."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, f"{name} has an invalid character (a lone UTF-16 surrogate).", param=name
        ) from None
    return value


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(v, str) for v in stops):
        raise ApiError(
            400, f"stop must be a string or a list of strings, got {value!r:.80}.", param="stop"
        )
    if len(stops) > MAX_STOP_STRINGS or any(len(v) > MAX_STOP_CHARS for v in stops):
        raise ApiError(
            400,
            f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} "
            "characters each.",
            param="stop",
        )
    return tuple(_text(v, "stop") for v in stops)


def _number(body: dict[str, Any], name: str, default: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not _finite(value):
        kind = "an integer" if integer else "a finite number"  # JSON parsing allows NaN
        raise ApiError(400, f"{name} must be {kind}, got {value!r:.80}.", param=name)
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range (JSON allows any length)
        return False


async def read_json(request: "Request", max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read at most ``max_bytes`` far (a huge body costs nothing)."""
    too_large = ApiError(
        413, f"request body is over {max_bytes} bytes; send fewer or shorter prompts per request."
    )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        # A form or text/plain POST is what a browser page may send cross-site without a
        # preflight; a JSON API has no reason to accept one.
        raise ApiError(
            415, "send the body as JSON with the header 'Content-Type: application/json'."
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
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be a request.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object.")
    return data


# ---------------------------------------------------------------------- responses ----------


def finish_reason(runtime_reason: str | None) -> str | None:
    """The runtime says eos / stop / length; OpenAI says stop for both of the first two."""
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(runtime_reason or "")


def completion_body(
    head: dict[str, Any],
    generations: list[Any],
    *,
    prompt_tokens: int | None = None,
    prefixes: list[str] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``prompt_tokens``: counted once per prompt (n copies of a prompt are not billed n
    times); ``prefixes``: each choice's echoed prompt; ``logprobs``: each choice's object."""
    choices = [
        {
            "text": (prefixes[i] if prefixes else "") + g.text,
            "index": i,
            "logprobs": logprobs[i] if logprobs else None,
            "finish_reason": finish_reason(g.finish_reason),
        }
        for i, g in enumerate(generations)
    ]
    if prompt_tokens is None:
        prompt_tokens = sum(g.prompt_tokens for g in generations)
    completion = sum(len(g.token_ids) for g in generations)
    return {**head, "choices": choices, "usage": usage(prompt_tokens, completion)}


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


def timed_out(timeout_s: float) -> ApiError:
    return ApiError(
        504,
        f"request took longer than the server's timeout of {timeout_s:g} s; "
        "ask for fewer tokens or retry when the server is less busy.",
        code="timeout",
    )
