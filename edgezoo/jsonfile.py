"""Read a small JSON settings file (config.json, run.json) as an object, or say what is wrong.

A hand-edited or half-copied file otherwise surfaces as ``JSONDecodeError`` or
``AttributeError: 'list' object has no attribute 'get'`` deep inside whoever read it; here
it is one ``CheckpointError`` naming the file, the problem and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgezoo.errors import CheckpointError


def read_object(path: str | Path, fix: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object in ``path`` holding every key in ``required``; else ``CheckpointError``.

    ``fix`` ends the message: what the user should do (restore, re-create, delete ...)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a text file (corrupt?); {fix}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); {fix}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {fix}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a JSON {_kind(data)}, not an object of settings; {fix}"
        )
    missing = [key for key in required if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(map(repr, missing))}; {fix}")
    return data


def _kind(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
