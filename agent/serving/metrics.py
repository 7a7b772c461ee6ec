"""Prometheus metrics of the serving endpoint, on their own registry (``GET /metrics``).

Every series carries the labels ``model``, ``version`` and ``profile`` of the model that served it; after a
swap new observations go to the new model's series.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.serving.records import RequestRecord

LABELS = ("model", "version", "profile")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    def __init__(self, profile: str = "") -> None:
        self.registry = CollectorRegistry()
        self._profile = profile
        self._labels = {"model": "", "version": "", "profile": profile}
        self._lock = threading.Lock()
        r = self.registry
        self.requests = Counter(
            "slmops_requests",
            "Requests by outcome (ok|error|cancelled|rejected|invalid)",
            (*LABELS, "status"),
            registry=r,
        )
        self.latency = Histogram(
            "slmops_request_latency_seconds",
            "Time from arrival to the last token",
            LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "slmops_ttft_seconds", "Time from arrival to the first token", LABELS, buckets=_TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "slmops_itl_seconds", "Mean inter-token latency per request", LABELS, buckets=_ITL_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "slmops_queue_wait_seconds", "Time waiting for a worker", LABELS, buckets=_TTFT_BUCKETS, registry=r
        )
        self.tokens_generated = Counter("slmops_tokens_generated", "Completion tokens generated", LABELS, registry=r)
        self.prompt_tokens = Counter("slmops_prompt_tokens", "Prompt tokens processed", LABELS, registry=r)
        self.queue_depth = Gauge("slmops_queue_depth", "Requests waiting for a worker", LABELS, registry=r)
        self.in_flight = Gauge("slmops_requests_in_flight", "Requests being generated", LABELS, registry=r)
        self.feedback = Counter("slmops_feedback", "User feedback by kind", (*LABELS, "kind"), registry=r)
        self.health_ok = Gauge("slmops_health_ok", "1 when the last health check passed", LABELS, registry=r)
        self.model_loaded = Gauge("slmops_model_loaded", "1 while a model is served", LABELS, registry=r)

    # --- labels ---------------------------------------------------------------------------------------------
    def set_model(self, model: str, version: str) -> None:
        with self._lock:
            if self._labels["model"]:
                self.model_loaded.labels(**self._labels).set(0)
            self._labels = {"model": model, "version": version, "profile": self._profile}
            self.model_loaded.labels(**self._labels).set(1)

    def labels(self, model: str | None = None, version: str | None = None) -> dict[str, str]:
        with self._lock:
            labels = dict(self._labels)
        if model is not None:
            labels["model"] = model
        if version is not None:
            labels["version"] = version
        return labels

    # --- observations ---------------------------------------------------------------------------------------
    def count(self, status: str, model: str | None = None, version: str | None = None) -> None:
        self.requests.labels(**self.labels(model, version), status=status).inc()

    def observe(self, rec: RequestRecord) -> None:
        labels = self.labels(rec.model_id, rec.version)
        status = "error" if rec.error else "cancelled" if rec.cancelled else "ok"
        self.requests.labels(**labels, status=status).inc()
        self.queue_wait.labels(**labels).observe(rec.queue_wait_ms / 1000.0)
        self.prompt_tokens.labels(**labels).inc(rec.prompt_tokens)
        self.tokens_generated.labels(**labels).inc(rec.completion_tokens)
        if rec.error or rec.cancelled:
            return
        self.latency.labels(**labels).observe(rec.total_ms / 1000.0)
        if rec.ttft_ms is not None:
            self.ttft.labels(**labels).observe(rec.ttft_ms / 1000.0)
        if rec.itl_ms is not None:
            self.itl.labels(**labels).observe(rec.itl_ms / 1000.0)

    def set_queue(self, depth: int, running: int) -> None:
        labels = self.labels()
        self.queue_depth.labels(**labels).set(depth)
        self.in_flight.labels(**labels).set(running)

    def set_health(self, ok: bool) -> None:
        self.health_ok.labels(**self.labels()).set(1 if ok else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
