"""Prometheus metrics of the embedded model server.

Two families:

* TF Serving's own names (``:tensorflow:serving:request_count``, ``...:request_latency`` in
  microseconds, ``...:load_attempt_count``), so dashboards and alerts written for TF Serving keep
  working. TF Serving labels these by model only, not by version.
* ``serving_*`` metrics with the version as a label, which is what a rollout needs: requests and
  latency per model/version/API, and which versions are loaded right now.

Every server owns its registry, so tests can run several servers in one process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

UNKNOWN_MODEL = "__unknown__"  # label for requests naming a model that is not configured
# TF Serving's request_latency buckets: Buckets::Exponential(10, 1.8, 33), in microseconds.
TF_LATENCY_BUCKETS_US = tuple(round(10.0 * 1.8**i, 3) for i in range(33))
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _ExactNameCounters(Collector):
    """Counters exposed under their exact TF Serving names.

    prometheus_client appends ``_total`` to counters; TF Serving does not, and a dashboard
    querying ``:tensorflow:serving:request_count`` must find it. These are exposed untyped
    (Prometheus ``rate()`` works on them all the same).
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labelvalues: str) -> None:
        with self._lock:
            self._values[labelvalues] = self._values.get(labelvalues, 0.0) + 1.0

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self._name, self._doc, "unknown")
        with self._lock:
            items = list(self._values.items())
        for labelvalues, value in items:
            metric.add_sample(
                self._name, dict(zip(self._labelnames, labelvalues, strict=True)), value
            )
        yield metric

    def describe(self) -> Iterable[Metric]:
        yield Metric(self._name, self._doc, "unknown")


class ServingMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        reg = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        self.tf_request_count = _ExactNameCounters(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ("model_name", "status"),
        )
        reg.register(self.tf_request_count)
        self.tf_request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            buckets=TF_LATENCY_BUCKETS_US,
            registry=reg,
        )
        self.tf_load_attempt_count = _ExactNameCounters(
            ":tensorflow:serving:load_attempt_count",
            "The number of times load was attempted, by status.",
            ("model_name", "version", "status"),
        )
        reg.register(self.tf_load_attempt_count)

        self.requests = Counter(
            "serving_requests",
            "Requests (REST and gRPC) by model, version, API and canonical status code.",
            ("model_name", "version", "api", "status"),
            registry=reg,
        )
        self.request_latency = Histogram(
            "serving_request_latency_seconds",
            "Wall time of a request from its body read to its answer, by model/version/API.",
            ("model_name", "version", "api"),
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.runtime_latency = Histogram(
            "serving_runtime_latency_seconds",
            "Time spent in the TensorFlow function call alone.",
            ("model_name", "version", "api"),
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.batch_rows = Histogram(
            "serving_batch_rows",
            "Rows (examples) per predict/classify/regress request.",
            ("model_name", "api"),
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.version_available = Gauge(
            "serving_model_version_available",
            "1 for each version currently AVAILABLE (serving), per model.",
            ("model_name", "version"),
            registry=reg,
        )
        self.latest_version = Gauge(
            "serving_model_latest_version",
            "Highest AVAILABLE version per model (what unpinned requests get); -1 if none.",
            ("model_name",),
            registry=reg,
        )
        self.load_attempts = Counter(
            "serving_model_load_attempts",
            "Version load attempts by outcome.",
            ("model_name", "version", "status"),
            registry=reg,
        )
        self.load_seconds = Gauge(
            "serving_model_load_seconds",
            "Load + warm-up time of each loaded version.",
            ("model_name", "version"),
            registry=reg,
        )

    def observe_request(
        self,
        model_name: str,
        version: str,
        api: str,
        status: str,
        seconds: float,
        rows: int | None = None,
        runtime_s: float | None = None,
        entrypoint: str = "REST",
    ) -> None:
        """Count one request; ``entrypoint`` is TF Serving's label of the protocol (REST, GRPC)."""
        key = (model_name, version, api, status, entrypoint)
        children = self._children.get(key)
        if children is None:
            # labels() costs a lock and a dict lookup per metric; resolve them once per key.
            model_api = api in ("predict", "classify", "regress")
            children = (
                self.requests.labels(model_name, version, api, status),
                self.request_latency.labels(model_name, version, api),
                self.tf_request_latency.labels(model_name, api, entrypoint) if model_api else None,
                self.batch_rows.labels(model_name, api) if model_api else None,
                self.runtime_latency.labels(model_name, version, api) if model_api else None,
            )
            if len(self._children) < 10_000:
                self._children[key] = children
        count, latency, tf_latency, batch_rows, runtime = children
        count.inc()
        latency.observe(seconds)
        if tf_latency is not None:
            self.tf_request_count.inc(model_name, status)
            tf_latency.observe(seconds * 1e6)
        if rows is not None and batch_rows is not None:
            batch_rows.observe(rows)
        if runtime_s is not None and runtime is not None:
            runtime.observe(runtime_s)

    def version_loaded(self, model_name: str, version: int, seconds: float) -> None:
        self.version_available.labels(model_name, str(version)).set(1)
        self.load_seconds.labels(model_name, str(version)).set(seconds)
        self.load_attempts.labels(model_name, str(version), "OK").inc()
        self.tf_load_attempt_count.inc(model_name, str(version), "success")

    def version_failed(self, model_name: str, version: int, code: str) -> None:
        self.load_attempts.labels(model_name, str(version), code).inc()
        self.tf_load_attempt_count.inc(model_name, str(version), "fail")

    def version_unloaded(self, model_name: str, version: int) -> None:
        for gauge in (self.version_available, self.load_seconds):
            with contextlib.suppress(KeyError):  # never loaded, or already removed
                gauge.remove(model_name, str(version))

    def set_latest(self, model_name: str, version: int | None) -> None:
        self.latest_version.labels(model_name).set(-1 if version is None else version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
