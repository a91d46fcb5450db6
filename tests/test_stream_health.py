"""The consumer's metrics and probe endpoints: loopback unless told otherwise, /healthz and
/ready answer what the loop and the model server are doing."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from app import stream_cli as cli
from streaming.broker import free_port
from streaming.health import ConsumerHealth
from streaming.metrics import StreamMetrics


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_bind_loopback_by_default() -> None:
    args = cli.build_parser().parse_args(["stream", "consume"])
    assert args.metrics_host == "127.0.0.1"
    server = StreamMetrics().serve(free_port())
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()


def test_probes_follow_the_loop_and_the_model_server() -> None:
    health = ConsumerHealth(liveness_timeout_s=0.2)
    metrics = StreamMetrics()
    port = free_port()
    server = metrics.serve(port, health=health)
    try:
        assert _get(port, "/ready") == (503, "the consumer loop has not started\n")
        assert _get(port, "/healthz")[0] == 200
        health.beat()
        assert _get(port, "/ready") == (200, "ok\n")
        health.scoring_failed("model server unavailable for 61 s")
        assert _get(port, "/ready") == (503, "model server unavailable for 61 s\n")
        assert _get(port, "/healthz")[0] == 200  # holding is alive: no restart
        health.scoring_recovered()
        assert _get(port, "/ready")[0] == 200
        status, body = _get(port, "/metrics")
        assert status == 200 and "fraud_stream_fallback_decisions_total" in body
        # A loop that stops turning is not alive (the kubelet restarts the pod).
        time.sleep(0.3)
        status, body = _get(port, "/healthz")
        assert status == 503 and "has not turned" in body
    finally:
        server.shutdown()
