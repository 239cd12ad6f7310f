"""Drive a running server with many concurrent clients on loopback, bounded in time.

Used by the test suite (correctness under load) and ``benchmarks/serve_load.py``
(throughput and p95 latency at 1/4/16/64 clients). Traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@contextlib.contextmanager
def running_server(app, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@dataclass
class LoadResult:
    clients: int
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of successful requests
    incomplete: int = 0  # 200 answers without a finished choice
    errors: list[str] = field(default_factory=list)  # transport errors (crash, reset)
    completion_tokens: int = 0
    abusive_statuses: Counter = field(default_factory=Counter)  # of the abusive mix, if any

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "requests_ok": self.ok,
            "statuses": dict(self.statuses),
            "requests_per_s": self.ok / self.seconds,
            "tokens_per_s": self.completion_tokens / self.seconds,
            "latency_p50_ms": statistics.median(lat) * 1000 if lat else None,
            "latency_p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1000 if lat else None,
            "incomplete": self.incomplete,
            "transport_errors": len(self.errors),
            "abusive_statuses": dict(self.abusive_statuses),
        }


def _stream_as_body(text: str) -> dict:
    """A server-sent completion stream folded into the shape of a non-streamed body: one
    choice per index with its last finish reason, and the usage chunk (if asked for).
    A stream cut short (no ``[DONE]``) has no choices, so it counts as incomplete."""
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]
    if not events or events[-1] != "[DONE]":
        return {}
    choices: dict[int, dict] = {}
    usage: dict = {}
    for chunk in map(json.loads, events[:-1]):
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices", []):
            choices.setdefault(c["index"], {})["finish_reason"] = c.get("finish_reason")
    return {"choices": list(choices.values()), "usage": usage}


def hammer(
    url: str,
    clients: int,
    seconds: float,
    body: dict,
    api_key: str | None = None,
    *,
    abusive: list[dict] | None = None,
    abuse_share: float = 0.0,
) -> LoadResult:
    """``clients`` threads each sending requests back to back for ``seconds``.

    With ``abusive`` (httpx request arguments: ``json=`` or ``content=`` + ``headers=``),
    that share of the requests is drawn from it instead; their statuses are counted in
    ``abusive_statuses`` and everything else in the result is about well-formed requests.
    """
    import httpx

    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    stop = time.time() + seconds
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def client(seed: int) -> None:
        draw = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            while time.time() < stop:
                bad = bool(abusive) and draw.random() < abuse_share
                t0 = time.perf_counter()
                try:
                    if bad:
                        r = http.post("/v1/completions", **draw.choice(abusive))
                    else:
                        r = http.post("/v1/completions", json=body)
                except httpx.HTTPError as e:
                    with lock:
                        result.errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    if bad:
                        result.abusive_statuses[r.status_code] += 1
                    else:
                        _record(result, r, elapsed, stream=bool(body.get("stream")))
                if r.status_code in (429, 503):
                    time.sleep(float(r.headers.get("Retry-After", "0.05")) / 20)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def _record(result: LoadResult, r: Any, elapsed: float, *, stream: bool) -> None:
    """Count one well-formed request's answer (the caller holds the lock)."""
    result.statuses[r.status_code] += 1
    if r.status_code != 200:
        return
    data = _stream_as_body(r.text) if stream else r.json()
    if not data.get("choices") or any(c.get("finish_reason") is None for c in data["choices"]):
        result.incomplete += 1
    result.latencies.append(elapsed)
    result.completion_tokens += data.get("usage", {}).get("completion_tokens", 0)
