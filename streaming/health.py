"""Liveness and readiness of the scoring consumer, served beside its metrics.

``GET /healthz`` answers 200 while the consumer's loop keeps turning (it beats once per batch
and while it waits for the model server), 503 when it has been stuck longer than
``liveness_timeout_s``: restarting the pod is then the remedy. ``GET /ready`` answers 200 once
the loop runs and while decisions are being made, 503 with the reason while the model server
has been unavailable for longer than the consumer's lag bound (decisions are late or fall
back). ``GET /metrics`` is the Prometheus exposition. With a ``labels`` app,
``POST /labels`` takes analysts' review outcomes (``streaming.review_labels.label_endpoint``).
"""

from __future__ import annotations

import socketserver
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

DEFAULT_LIVENESS_TIMEOUT_S = 180.0


class ConsumerHealth:
    """Thread-safe flags the loop sets and the probe endpoints read."""

    def __init__(self, liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self._lock = threading.Lock()
        self._last_beat: float | None = None
        self._not_ready: str | None = None

    def beat(self) -> None:
        with self._lock:
            self._last_beat = time.monotonic()

    @property
    def scoring_ok(self) -> bool:
        with self._lock:
            return self._not_ready is None

    def scoring_failed(self, reason: str) -> None:
        with self._lock:
            self._not_ready = reason

    def scoring_recovered(self) -> None:
        with self._lock:
            self._not_ready = None

    def live(self) -> tuple[bool, str]:
        with self._lock:
            beat = self._last_beat
        if beat is None:
            return True, "starting"
        silent = time.monotonic() - beat
        if silent > self.liveness_timeout_s:
            return False, f"the consumer loop has not turned for {silent:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            beat, reason = self._last_beat, self._not_ready
        if beat is None:
            return False, "the consumer loop has not started"
        if reason is not None:
            return False, reason
        return self.live()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # probes every few seconds would drown the consumer's log


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up the probes: one thread per request.
    daemon_threads = True


def serve(
    registry: Any, health: ConsumerHealth, port: int, host: str, labels: Any | None = None
) -> Any:
    """Serve /metrics, /healthz and /ready (and /labels with the ``labels`` WSGI app) on
    ``host:port`` in a daemon thread; returns the server (``shutdown()`` stops it)."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/ready"):
            ok, why = health.live() if path == "/healthz" else health.ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode() + b"\n"]
        if path == "/labels" and labels is not None:
            return labels(environ, start_response)
        return metrics_app(environ, start_response)

    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
