"""Prometheus metrics for the server: counters, histograms and the ASGI middleware that
times every request to its last byte."""

import time
from collections.abc import Callable
from typing import Any

ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/classify")


class Metrics:
    """Prometheus metrics in the app's own registry, so two apps in one process never clash."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "edgezoo_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "edgezoo_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated_tokens = Counter(
            "edgezoo_generated_tokens",
            "Tokens generated (completions and streams).",
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "edgezoo_prompt_tokens", "Prompt tokens processed.", registry=registry
        )
        self.queue_depth = Gauge(
            "edgezoo_queue_depth", "Prompts waiting for the model.", registry=registry
        )
        self.batch_size = Histogram(
            "edgezoo_batch_size",
            "Rows per model call.",
            registry=registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streams pass through untouched and their latency
    is measured to the last byte. Unknown paths count as "other": no unbounded label values."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status, start = 500, time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
