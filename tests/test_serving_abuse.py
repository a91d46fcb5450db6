"""The embedded model server on TF Serving's own shape semantics, and under abuse.

One real server subprocess serves TF Serving's ``half_plus_two`` test model (``x`` declared
``[-1, 1]``), a TF1-style SavedModel (variables, a vocabulary asset, a ``main_op``), the tiny
fraud model and a model that is hot-swapped, with short header/body timeouts and a small body
cap so that the abuse cases run in seconds.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from serving_fixtures import ROWS, ServerProcess, columns, model_config, version_states
from stream_fixtures import ModelStore, install_version, wait_for

from serving._launch import child_env
from serving.client import ModelClient

MAX_BODY = 4 * 1024 * 1024
TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    root = tmp_path_factory.mktemp("abuse")
    for kind, directory in (("half_plus_two", "hpt"), ("tf1", "tf1")):
        subprocess.run(
            [sys.executable, "-m", "serving._example_models", kind, str(root / directory)]
            + ["--version", "1"],
            check=True,
            env=child_env(),
            capture_output=True,
        )
    install_version(model_store.example, root / "fraud", 1)
    install_version(model_store.example, root / "swap", 1)
    models = [
        {"name": "half_plus_two", "base_path": root / "hpt"},
        {"name": "tf1", "base_path": root / "tf1"},
        {"name": "fraud", "base_path": root / "fraud"},
        {"name": "swap", "base_path": root / "swap"},
    ]
    (root / "models.config").write_text(model_config(models))
    return root


@pytest.fixture(scope="module")
def server(base: Path):
    proc = ServerProcess(
        [
            f"--model_config_file={base / 'models.config'}",
            "--file_system_poll_wait_seconds=0.2",
            f"--rest_api_max_request_bytes={MAX_BODY}",
            f"--rest_api_header_timeout_in_ms={TIMEOUT_MS}",
            f"--rest_api_body_timeout_in_ms={TIMEOUT_MS}",
        ],
        log_path=base / "server.log",
    )
    with proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"


def _post(server: ServerProcess, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(server.url + path, data=data, timeout=30)


def _alive(server: ServerProcess) -> None:
    r = _post(server, "/v1/models/fraud:predict", {"instances": ROWS})
    assert r.status_code == 200, r.text


# --- shapes: the graph judges them, not the JSON decoder ------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ({"instances": [1.0, 2.0, 5.0]}, "predictions", [2.5, 3.0, 4.5]),  # TF Serving's README
        ({"instances": [[1.0, 2.0], [3.0, 4.0]]}, "predictions", [[2.5, 3.0], [3.5, 4.0]]),
        ({"instances": [[1.0], [2.0]]}, "predictions", [[2.5], [3.0]]),
        ({"signature_name": "serving_default", "inputs": [3.0, 4.0]}, "outputs", [3.5, 4.0]),
        ({"inputs": 3.0}, "outputs", 3.5),
    ],
)
def test_request_shape_is_not_checked_against_the_signature(
    server: ServerProcess, body: dict[str, Any], key: str, expected: Any
) -> None:
    r = _post(server, "/v1/models/half_plus_two:predict", body)
    assert r.status_code == 200, r.text
    assert r.json() == {key: expected}


def test_a_tf1_saved_model_with_variables_and_an_asset(server: ServerProcess) -> None:
    r = _post(server, "/v1/models/tf1:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}  # the 0.5 is a restored variable
    body = {"signature_name": "lookup", "instances": ["b", "zz", "c"]}
    r = _post(server, "/v1/models/tf1:predict", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [1, -1, 2]}  # the table filled from the shipped asset


def test_a_shape_the_graph_refuses_is_a_400(server: ServerProcess) -> None:
    body = {"inputs": {**columns(), "amount": [[1.0]] * len(ROWS)}}
    r = _post(server, "/v1/models/fraud:predict", body)
    assert r.status_code == 400, r.text
    assert "Shapes of all inputs must match" in r.json()["error"]
    _alive(server)


# --- abuse ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [33, 200, 1000, 5000])
@pytest.mark.parametrize("name", ["timestamp", "amount"])
def test_deep_nesting_is_a_400(server: ServerProcess, name: str, depth: int) -> None:
    leaf = "2024-05-01T13:45:00Z" if name == "timestamp" else 1.0
    others = {k: v for k, v in ROWS[0].items() if k != name}
    # Built by hand: orjson itself refuses to write such depths.
    text = (
        orjson.dumps({"instances": [others]})[:-3]
        + f', "{name}": '.encode()
        + b"[" * depth
        + orjson.dumps(leaf)
        + b"]" * depth
        + b"}]}"
    )
    r = _post(server, "/v1/models/fraud:predict", text)
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    _alive(server)


def test_client_leaving_mid_body_is_no_server_error(server: ServerProcess) -> None:
    for _ in range(5):
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/models/fraud:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                b'{"instances": [1, 2, '
            )
            time.sleep(0.1)
    _alive(server)
    wait_for(lambda: server.log_text().count("client left mid-request") >= 5, what="5 log lines")
    assert "Traceback" not in server.log_text()
    assert "internal error" not in server.log_text()


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the peer closed (EOF or reset); data (a 408 answer) counts as not yet."""
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    if data:
        return _closed_by_server(sock)
    return True


def test_slowloris_connections_are_closed(server: ServerProcess) -> None:
    socks = []
    try:
        for _ in range(50):
            sock = socket.create_connection((server.host, server.port), timeout=5)
            sock.sendall(b"POST /v1/models/fraud:predict HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        for _ in range(3):  # keep trickling header bytes: activity must not extend the deadline
            time.sleep(0.3)
            for sock in socks:
                sock.sendall(b"X-a: b\r\n")
        _alive(server)  # the server keeps serving meanwhile
        started = time.monotonic()
        for sock in socks:
            sock.settimeout(max(0.1, started + 20 - time.monotonic()))
            assert _closed_by_server(sock)
    finally:
        for sock in socks:
            sock.close()


def test_slow_body_gets_a_408_and_the_connection_closes(server: ServerProcess) -> None:
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(
            b"POST /v1/models/fraud:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"--rest_api_body_timeout_in_ms" in answer or _closed_by_server(sock)
    _alive(server)


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _densest_body() -> bytes:
    """Just under the cap: the densest numeric body a client can send (its answer is larger)."""
    n = (MAX_BODY - 100) // len(b"1.5,")
    body = b'{"instances": [' + b",".join([b"1.5"] * n) + b"]}"
    assert len(body) <= MAX_BODY
    return body


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_stays_below_idle_plus_four_body_caps(server: ServerProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    _alive(server)
    idle = _rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    r = _post(server, "/v1/models/half_plus_two:predict", _densest_body())
    assert r.status_code == 200, r.text[:300]
    peak = _rss_kib(pid, "VmHWM")
    print(f"idle RSS {idle} KiB, peak {peak} KiB, cap {MAX_BODY // 1024} KiB")
    assert peak - idle < 4 * MAX_BODY // 1024


def test_client_leaving_while_a_large_answer_is_sent_is_no_server_error(
    server: ServerProcess,
) -> None:
    body = _densest_body()
    head = (
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for _ in range(3):
        sock = socket.socket()
        # A small window keeps most of the answer on the server's side when the client goes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect((server.host, server.port))
        sock.sendall(head + body)
        assert sock.recv(16).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with the answer mostly unread
    _alive(server)
    wait_for(
        lambda: server.log_text().count("client left before its answer was sent") >= 3,
        what="3 log lines",
    )
    assert "Traceback" not in server.log_text()
    assert "internal error" not in server.log_text()


_DENSE_CASES = [
    b"[1.5, 2.0, 5.0]",
    b"[1, 2, 3]",
    b"[-0.5, 1e-05, 1E+5, 0, -0.0]",
    b"[16777217, 1.5]",
    b"[1e39]",
    b"[1.5, .5]",
    b"[1,,2]",
    b"[1 2]",
    b"[1,2,]",
    b"[true, 1.5]",
    b"[NaN, 1]",
    b"[]",
    b"[[1.5], [2.0]]",
    b'["a", "b"]',
]
_DENSE_SHELLS = [
    b'{"instances": %s}',
    b'{"inputs": %s}',
    b'{"signature_name": "serving_default", "instances": %s}',
    b'{"inputs": %s, "signature_name": "serving_default"}',
    b'{"inputs": %s, "signature_name": "nope"}',
    b'{"signature_name": "a", "inputs": %s, "signature_name": "b"}',
]


@pytest.mark.parametrize("shell", _DENSE_SHELLS)
def test_large_dense_bodies_answer_as_the_json_path_does(
    server: ServerProcess, shell: bytes
) -> None:
    """Bodies of 1 MiB and more are converted without a Python object per number: every
    answer, value or error, is the one the same document gets below that size."""
    pad = b" " * (1 << 20)
    for case in _DENSE_CASES:
        small = _post(server, "/v1/models/half_plus_two:predict", shell % case)
        large = _post(server, "/v1/models/half_plus_two:predict", shell % case + pad)
        assert (large.status_code, large.content) == (small.status_code, small.content), case
    big = shell % (b"[" + b",".join([b"1.5"] * (1 << 19)) + b"]")
    r = _post(server, "/v1/models/half_plus_two:predict", big)
    if b"nope" in shell or b'"b"' in shell:
        assert r.status_code == 400, r.text[:200]
    else:
        assert r.status_code == 200, r.text[:200]
        values = orjson.loads(r.content)
        assert (values.get("predictions") or values.get("outputs"))[-1] == 2.75


def test_client_survives_hot_swap_without_retries(
    server: ServerProcess, base: Path, model_store: ModelStore
) -> None:
    client = ModelClient(server.url, "swap", max_retries=0, timeout_s=10, version_refresh_s=30)
    assert client.predict(ROWS).model_version == "1"
    stop = threading.Event()
    errors: list[str] = []
    versions: set[str] = set()

    def loop() -> None:
        while not stop.is_set():
            try:
                versions.add(client.predict(ROWS).model_version)
            except Exception as exc:
                errors.append(repr(exc))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        install_version(model_store.example, base / "swap", 2)
        wait_for(lambda: version_states(server.url, "swap") == {2: "AVAILABLE", 1: "END"},
                 what="v2 to replace v1")  # fmt: skip
        # The cached version (refreshed only every 30 s) is gone now: the next call must move on.
        deadline = time.monotonic() + 10
        while "2" not in versions and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    assert versions == {"1", "2"}
