"""serving.client.ModelClient against a real model server subprocess (no mocks of the server).

The last test stops and restarts that server on the same port to exercise retries, backoff and
the circuit breaker end to end.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import numpy as np
import pytest
import requests
from serving_fixtures import (
    ROWS,
    ServerProcess,
    columns,
    expected_scores,
    model_config,
)
from stream_fixtures import ModelStore, install_version

from serving._launch import free_port
from serving.client import (
    CircuitBreaker,
    CircuitOpenError,
    ModelClient,
    ServingHTTPError,
    ServingUnavailableError,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore):
    store = model_store.example
    base = tmp_path_factory.mktemp("client-models")
    for version in (1, 2):
        install_version(store, base / "fraud", version)
    config = base / "models.config"
    config.write_text(
        model_config(
            [
                {
                    "name": "fraud",
                    "base_path": base / "fraud",
                    "policy": "all {}",
                    "labels": {"stable": 1},
                }
            ]
        )
    )
    proc = ServerProcess([f"--model_config_file={config}"], log_path=base / "server.log")
    with proc:
        yield proc


def test_predict_rows_and_columns(server: ServerProcess) -> None:
    with ModelClient(server.url, "fraud") as client:
        result = client.predict(ROWS)
        assert result.model_version == "2"  # highest AVAILABLE
        assert result.scores.dtype == np.float64 and result.scores.shape == (len(ROWS),)
        assert np.allclose(result.scores, expected_scores(2), atol=1e-6)
        assert result.latency_s > 0 and result.attempts == 1

        cols = columns()
        cols["amount"] = np.asarray(cols["amount"], dtype=np.float32)
        cols["timestamp"] = np.asarray(cols["timestamp"])  # numpy strings are converted too
        by_columns = client.predict(cols)
        assert np.allclose(by_columns.scores, result.scores, atol=1e-6)


def test_version_and_label_pinning(server: ServerProcess) -> None:
    v1 = ModelClient(server.url, "fraud", version=1).predict(ROWS)
    assert v1.model_version == "1" and np.allclose(v1.scores, expected_scores(1), atol=1e-6)
    stable = ModelClient(server.url, "fraud", label="stable").predict(ROWS)
    assert stable.model_version == "1" and np.allclose(stable.scores, v1.scores)
    with pytest.raises(ValueError, match="not both"):
        ModelClient(server.url, "fraud", version=1, label="stable")


def test_status_metadata_and_wait(server: ServerProcess) -> None:
    client = ModelClient(server.url, "fraud")
    assert client.wait_until_available(timeout_s=5) == "2"
    states = {v["version"]: v["state"] for v in client.status()["model_version_status"]}
    assert states == {"2": "AVAILABLE", "1": "AVAILABLE"}
    meta = client.metadata()
    assert meta["model_spec"]["version"] == "2"
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]
    assert (
        ModelClient(server.url, "fraud", label="stable").metadata()["model_spec"]["version"] == "1"
    )
    with pytest.raises(TimeoutError, match="not available"):
        ModelClient(server.url, "nope").wait_until_available(timeout_s=0.3, poll_s=0.1)


def test_client_errors_are_raised_not_retried(server: ServerProcess) -> None:
    client = ModelClient(server.url, "fraud", max_retries=3, backoff_s=1.0, breaker_failures=1)
    started = time.monotonic()
    with pytest.raises(ServingHTTPError) as err:
        client.predict([{**ROWS[0], "amount": "not a number"}])
    assert err.value.status_code == 400
    assert "amount" in err.value.message
    assert time.monotonic() - started < 0.9  # no 1 s backoff happened: a 4xx is final
    assert client.breaker.state == "closed"  # the server answered: it is healthy

    with pytest.raises(ServingHTTPError) as err:
        ModelClient(server.url, "fraud", version=9).predict(ROWS)
    assert err.value.status_code == 404
    with pytest.raises(ValueError, match="same fields"):
        client.predict([ROWS[0], {"amount": 1.0}])


def test_many_threads_share_one_client(server: ServerProcess) -> None:
    client = ModelClient(server.url, "fraud")
    failures: list[Exception] = []

    def work() -> None:
        for _ in range(10):
            try:
                assert client.predict(ROWS).model_version == "2"
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []


def test_retries_backoff_and_circuit_breaker_against_a_stopped_server(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = ModelClient(
        server.url,
        "fraud",
        timeout_s=2.0,
        max_retries=2,
        backoff_s=0.2,
        breaker_failures=3,
        breaker_reset_s=1.0,
        version_refresh_s=60.0,
    )
    assert client.predict(ROWS).model_version == "2"
    server.stop()

    # Connection refused: 3 attempts with backoff (0.2 s then 0.4 s, jittered to >= half), each
    # retried one logged with its cause.
    started = time.monotonic()
    with (
        caplog.at_level(logging.INFO, logger="serving.client_common"),
        pytest.raises(ServingUnavailableError, match="after 3 attempts"),
    ):
        client.predict(ROWS)
    assert time.monotonic() - started >= 0.3
    retried = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert [m.split(": ")[1] for m in retried] == ["attempt 1 of 3 failed", "attempt 2 of 3 failed"]
    assert all("ConnectionError" in m for m in retried), retried
    assert client.breaker.state == "open"  # 3 consecutive failures

    # Open: fails before any request (a refused connection would be a ServingUnavailableError).
    with pytest.raises(CircuitOpenError, match="circuit open"):
        client.predict(ROWS)

    # Half-open after the reset time: one trial, it fails, the circuit opens again at once.
    time.sleep(1.1)
    assert client.breaker.state == "half_open"
    with pytest.raises(CircuitOpenError):
        client.predict(ROWS)
    assert client.breaker.state == "open"

    server.start()  # same port; takes longer than breaker_reset_s
    result = client.predict(ROWS)  # the half-open trial succeeds and closes the circuit
    assert result.model_version == "2"
    assert client.breaker.state == "closed"
    assert requests.get(server.url + "/v1/models/fraud", timeout=5).ok


def test_circuit_breaker_state_machine() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5.0, clock=lambda: now[0])
    breaker.before_call("x")
    breaker.record_failure()
    breaker.record_success()  # success resets the consecutive count
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="next trial in 5.0s"):
        breaker.before_call("x")
    now[0] = 5.0
    assert breaker.state == "half_open"
    breaker.before_call("x")  # the single trial
    with pytest.raises(CircuitOpenError, match="trial call in flight"):
        breaker.before_call("x")
    breaker.record_failure()
    assert breaker.state == "open"
    now[0] = 10.0
    breaker.before_call("x")
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call("x")


def test_rows_must_be_consistent() -> None:
    client = ModelClient("http://127.0.0.1:9", "m")
    with pytest.raises(ValueError, match="at least one row"):
        client.predict([])
    with pytest.raises(ValueError, match="has 1 values"):
        client.predict({"a": [1.0, 2.0], "b": [1.0]})


class _ClosingServer(http.server.ThreadingHTTPServer):
    """Answers every predict with one score, then closes the connection without saying so
    (no ``Connection: close``), as a server does when it drops idle keep-alive connections."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ClosingHandler)
        self.closed = threading.Semaphore(0)
        self.peers: list[tuple[str, int]] = []

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.closed.release()


class _ClosingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.peers.append(self.client_address)  # type: ignore[attr-defined]
        body = b'{"outputs": [0.5]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_deadline_ends_the_retries_and_a_passed_one_sends_nothing() -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    client = ModelClient(nothing_listens, "fraud", timeout_s=5.0, max_retries=3, backoff_s=1.0)
    # The first backoff (at least 0.5 s after jitter) would end past the deadline: no retry.
    with pytest.raises(
        ServingUnavailableError, match=r"at the caller's deadline after 1 attempt\(s\).*refused"
    ):
        client.predict(ROWS, deadline=time.monotonic() + 0.3)
    with pytest.raises(ServingUnavailableError, match="deadline passed"):
        client.metadata(deadline=time.monotonic() - 1.0)
    # Only the refused connection counts against the server; the passed deadline sent nothing.
    client.breaker.record_failure()
    client.breaker.record_failure()
    client.breaker.record_failure()
    assert client.breaker.state == "closed"
    client.breaker.record_failure()
    assert client.breaker.state == "open"


def test_a_keep_alive_connection_the_server_closed_is_replaced_without_a_retry() -> None:
    server = _ClosingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with ModelClient(url, "m", version=1, max_retries=0, output_key=None) as client:
            for _ in range(3):
                assert client.predict({"x": [1.0]}).scores.tolist() == [0.5]
                assert server.closed.acquire(timeout=10)  # the server has closed it by now
        assert len(server.peers) == 3 and len(set(server.peers)) == 3  # one connection each
    finally:
        server.shutdown()
        server.server_close()
