"""The gateway's Prometheus metrics: requests by route and status, time to first byte, submits,
refusals, and the clients waiting on events. Job ids never become labels (route_of)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.hub import EventHub


class Metrics:
    def __init__(self, hub: EventHub):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lvm_gateway_requests_total", "HTTP requests answered", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "lvm_gateway_request_seconds",
            "Time to the response's first byte",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=self.registry,
        )
        self.rate_limited = Counter("lvm_gateway_rate_limited_total", "Submits refused (429)", registry=self.registry)
        self.overloaded = Counter(
            "lvm_gateway_overloaded_total", "Submits refused at a queue's admission bound (503)", registry=self.registry
        )
        self.submitted = Counter("lvm_gateway_submitted_total", "Jobs submitted", ["model"], registry=self.registry)
        clients = Gauge("lvm_gateway_sse_clients", "Clients waiting on events or ?wait", registry=self.registry)
        clients.set_function(lambda: hub.clients)
        events = Gauge("lvm_gateway_events_read", "Job events read from lvm:events", registry=self.registry)
        events.set_function(lambda: hub.events_seen)


def route_of(path: str) -> str:
    """A low-cardinality label: job ids never become metric labels."""
    if path == "/v1/chat/completions":
        return path
    if path.startswith("/v1/chat/"):
        return "/v1/chat/{id}/events" if path.endswith("/events") else "/v1/chat/{id}"
    return path if path in {"/", "/v1/chat", "/v1/models", "/healthz", "/readyz", "/metrics", "/docs"} else "other"


class MetricsMiddleware:
    """Counts each response by route and status code and times its first byte (pure ASGI, so a
    streaming response is not buffered)."""

    def __init__(self, app, metrics_getter):
        self.app, self.metrics_getter = app, metrics_getter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = route_of(scope.get("path", ""))

        async def sending(message):
            if message["type"] == "http.response.start":
                metrics = self.metrics_getter()
                if metrics is not None:
                    metrics.requests.labels(route, str(message["status"])).inc()
                    metrics.latency.labels(route).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, sending)
