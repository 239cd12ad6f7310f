"""JSON schemas of the request bodies, for the OpenAPI document.

The endpoints parse bodies by hand (``runtime.protocol``: errors that name the fix, limits
that depend on the server's flags), so FastAPI cannot infer these; they describe what
``protocol`` accepts. The server publishes no OpenAPI page by default
(``create_app(openapi_url=...)`` turns one on): tests fuzz the API from it.
"""

from __future__ import annotations

from typing import Any

from edgezoo.runtime.protocol import MAX_STOP_CHARS, MAX_STOP_STRINGS
from edgezoo.runtime.sampling import MAX_PENALTY, MIN_PENALTY

_TEXTS = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]
}

COMPLETION_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "prompt": _TEXTS,
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "repetition_penalty": {"type": "number", "minimum": MIN_PENALTY, "maximum": MAX_PENALTY},
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
    },
    "required": ["prompt"],
}

CLASSIFY_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "input": _TEXTS},
    "required": ["input"],
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body follows ``schema``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
