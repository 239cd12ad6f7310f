"""JSON schemas of the request bodies, for the OpenAPI document.

The endpoints parse bodies by hand (``runtime.protocol``: errors that name the fix, limits
that depend on the server's flags), so FastAPI cannot infer these; they describe what
``protocol`` accepts. The server publishes no OpenAPI page by default
(``create_app(openapi_url=...)`` turns one on): tests fuzz the API from it.
"""

from __future__ import annotations

from typing import Any

from edgezoo.runtime.protocol import (
    MAX_COMPLETION_LOGPROBS,
    MAX_N,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
)
from edgezoo.runtime.sampling import MAX_LOGPROBS, MAX_OPENAI_PENALTY, MAX_PENALTY, MIN_PENALTY

_TEXTS = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]
}

_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_OPENAI_PENALTY = {"type": "number", "minimum": -MAX_OPENAI_PENALTY, "maximum": MAX_OPENAI_PENALTY}
SAMPLING_FIELDS: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "repetition_penalty": {"type": "number", "minimum": MIN_PENALTY, "maximum": MAX_PENALTY},
    "presence_penalty": _OPENAI_PENALTY,
    "frequency_penalty": _OPENAI_PENALTY,
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
    "stop": {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
                "maxItems": MAX_STOP_STRINGS,
            },
        ]
    },
    "seed": {"type": "integer", "minimum": 0},
    "stream": {"type": "boolean"},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": {"type": "boolean"}},
    },
}

COMPLETION_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        **SAMPLING_FIELDS,
        "prompt": {
            "oneOf": [*_TEXTS["oneOf"], _IDS, {"type": "array", "items": _IDS, "minItems": 1}]
        },
        "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_COMPLETION_LOGPROBS},
    },
    "required": ["prompt"],
}

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        **SAMPLING_FIELDS,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {"type": "string"},
                },
                "required": ["role", "content"],
            },
        },
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
    },
    "required": ["messages"],
}

TOKENIZE_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt": {"type": "string"}, "add_special_tokens": {"type": "boolean"}},
    "required": ["prompt"],
}

DETOKENIZE_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
    "required": ["tokens"],
}

CLASSIFY_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "input": _TEXTS},
    "required": ["input"],
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body follows ``schema``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
