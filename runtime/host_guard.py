"""Loopback names only, for a server without an API key: the DNS-rebinding defence.

A keyless server bound to 127.0.0.1 is reachable by any web page the user opens: the page's
own domain is re-pointed at 127.0.0.1 and its scripts then talk to the server as a same-origin
site (the class of bug behind Ollama's CVE-2024-28224). Such requests still carry the page's
domain in their ``Host`` header, so a server that answers only loopback Host names is out
of the page's reach. With an API key the key is the defence and any Host is served.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another hostname: it may resolve to a public address


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` → ``::1``)."""
    header = header.strip()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostMiddleware:
    """Pure ASGI: answers 403 (OpenAI's error body) to any request whose Host is not a
    loopback name, before routing, so nothing of the app runs for it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if is_loopback(host_name(host)):
            await self.app(scope, receive, send)
            return
        message = (
            f"Host {host[:100]!r} is refused: this server has no API key, so it only answers "
            "requests addressed to localhost / 127.0.0.1 / [::1]. Use one of those names, or "
            "start the server with --api-key to serve other names."
        )
        body = json.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "host_not_allowed",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
