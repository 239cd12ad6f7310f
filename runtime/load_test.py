"""Drive a running server with many concurrent clients on loopback, bounded in time.

Used by the test suite (correctness under load) and ``benchmarks/serve_load.py``
(throughput and p95 latency at 1/4/16/64 clients). Traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


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
    url: str, clients: int, seconds: float, body: dict, api_key: str | None = None
) -> LoadResult:
    """``clients`` threads each sending requests back to back for ``seconds``."""
    import httpx

    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    stop = time.time() + seconds
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            while time.time() < stop:
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/completions", json=body)
                except httpx.HTTPError as e:
                    with lock:
                        result.errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    result.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        data = _stream_as_body(r.text) if body.get("stream") else r.json()
                        if not data.get("choices") or any(
                            c.get("finish_reason") is None for c in data["choices"]
                        ):
                            result.incomplete += 1
                        result.latencies.append(elapsed)
                        result.completion_tokens += data.get("usage", {}).get(
                            "completion_tokens", 0
                        )
                if r.status_code in (429, 503):
                    time.sleep(float(r.headers.get("Retry-After", "0.05")) / 20)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result
