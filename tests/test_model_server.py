"""The embedded model server against TF Serving's REST API semantics.

One real server subprocess (module fixture) serves five models from a model_config_file, each
test using its own model so the hot-swap / failure / reload scenarios do not interfere:

* ``fraud``   versions 1, 2 (``specific``), labels stable->1, canary->2  (API shape tests)
* ``hot``     starts at v1; v2 and v3 are dropped in while clients hammer it
* ``flaky``   starts at v1; a corrupt v2 appears, later replaced by a good one
* ``partial`` starts at v1; half-written and staging directories appear
* ``policy``  versions 1-3 under ``latest { num_versions: 2 }``, then changed by config reload
"""

from __future__ import annotations

import base64
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from serving_fixtures import (
    ROWS,
    ServerProcess,
    columns,
    expected_scores,
    install_broken_version,
    model_config,
    version_states,
    write_atomically,
)
from stream_fixtures import ModelStore, install_version, wait_for

from serving._launch import run_to_exit
from serving.client import ModelClient

MAX_BODY = 256 * 1024
POLL_S = 0.2


def _models(base: Path, fraud_labels: dict[str, int] | None = None, policy: str = "") -> str:
    return model_config(
        [
            {
                "name": "fraud",
                "base_path": base / "fraud",
                "policy": "specific { versions: 1 versions: 2 }",
                "labels": fraud_labels if fraud_labels is not None else {"stable": 1, "canary": 2},
            },
            {"name": "hot", "base_path": base / "hot"},
            {"name": "flaky", "base_path": base / "flaky"},
            {"name": "partial", "base_path": base / "partial"},
            {
                "name": "policy",
                "base_path": base / "policy",
                "policy": policy or "latest { num_versions: 2 }",
            },
        ]
    )


@pytest.fixture(scope="module")
def store(model_store: ModelStore) -> Path:
    return model_store.example


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Path:
    root = tmp_path_factory.mktemp("models")
    for version in (1, 2):
        install_version(store, root / "fraud", version)
    for name in ("hot", "flaky", "partial"):
        install_version(store, root / name, 1)
    for version in (1, 2, 3):
        install_version(store, root / "policy", version)
    (root / "models.config").write_text(_models(root))
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return root


@pytest.fixture(scope="module")
def server(base: Path):
    proc = ServerProcess(
        [
            f"--model_config_file={base / 'models.config'}",
            "--model_config_file_poll_wait_seconds=0.3",
            f"--monitoring_config_file={base / 'monitoring.config'}",
            f"--file_system_poll_wait_seconds={POLL_S}",
            f"--rest_api_max_request_bytes={MAX_BODY}",
            "--port=8500",
        ],
        log_path=base / "server.log",
    )
    with proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"


def _get(server: ServerProcess, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=10)


def _post(server: ServerProcess, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(server.url + path, data=data, timeout=10)


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _flat(predictions: Any) -> list[float]:
    return [p[0] if isinstance(p, list) else p for p in predictions]


# --- status / metadata ----------------------------------------------------------------------------


def test_status_matches_tf_serving_shape(server: ServerProcess) -> None:
    r = _get(server, "/v1/models/fraud")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    ok = {"error_code": "OK", "error_message": ""}
    assert r.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }
    one = _get(server, "/v1/models/fraud/versions/1").json()["model_version_status"]
    assert [v["version"] for v in one] == ["1"]
    canary = _get(server, "/v1/models/fraud/labels/canary").json()["model_version_status"]
    assert [v["version"] for v in canary] == ["2"]

    r = _get(server, "/v1/models/nope")
    assert (r.status_code, r.json()) == (
        404,
        {"error": "Could not find any versions of model nope"},
    )
    r = _get(server, "/v1/models/fraud/versions/7")
    assert (r.status_code, r.json()) == (404, {"error": "Could not find version 7 of model fraud"})
    r = _get(server, "/v1/models/fraud/labels/nope")
    assert r.status_code == 400
    assert r.json() == {"error": "Unrecognized servable version label: nope"}


def test_version_policy_latest_two(server: ServerProcess) -> None:
    # latest { num_versions: 2 } with 1, 2, 3 on disk: version 1 is never even loaded.
    assert version_states(server.url, "policy") == {3: "AVAILABLE", 2: "AVAILABLE"}


def test_metadata_is_the_signature_def_map(server: ServerProcess) -> None:
    doc = _get(server, "/v1/models/fraud/metadata").json()
    assert doc["model_spec"] == {"name": "fraud", "signature_name": "", "version": "2"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify", "regress"} <= set(sigs)
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    dtypes = {name: spec["dtype"] for name, spec in default["inputs"].items()}
    assert dtypes == {"amount": "DT_FLOAT", "n_tx_24h": "DT_INT64", "timestamp": "DT_STRING"}
    assert default["inputs"]["amount"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(default["outputs"]) == {"fraud_probability"}
    pinned = _get(server, "/v1/models/fraud/labels/stable/metadata").json()
    assert pinned["model_spec"]["version"] == "1"
    assert _get(server, "/v1/models/fraud/versions/9/metadata").status_code == 404


# --- predict / classify / regress -----------------------------------------------------------------


def test_predict_row_format(server: ServerProcess) -> None:
    r = _post(server, "/v1/models/fraud:predict", {"instances": ROWS})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"predictions"}
    assert all(isinstance(p, list) and len(p) == 1 for p in doc["predictions"])  # [None, 1]
    assert _close(_flat(doc["predictions"]), expected_scores(2))


def test_predict_columnar_format_and_b64(server: ServerProcess) -> None:
    cols = columns()
    first, *rest = cols["timestamp"]  # b64 objects and plain strings may be mixed
    cols["timestamp"] = [{"b64": base64.b64encode(first.encode()).decode()}, *rest]
    r = _post(server, "/v1/models/fraud/versions/1:predict", {"inputs": cols})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"outputs"}  # a single output is not wrapped in a name
    assert _close(_flat(doc["outputs"]), expected_scores(1))


def test_predict_by_label_and_signature_name(server: ServerProcess) -> None:
    body = {"signature_name": "serving_default", "instances": ROWS}
    stable = _post(server, "/v1/models/fraud/labels/stable:predict", body).json()
    canary = _post(server, "/v1/models/fraud/labels/canary:predict", body).json()
    assert _close(_flat(stable["predictions"]), expected_scores(1))
    assert _close(_flat(canary["predictions"]), expected_scores(2))


def test_classify_and_regress(server: ServerProcess) -> None:
    context = {"timestamp": ROWS[0]["timestamp"]}
    examples = [{"amount": r["amount"], "n_tx_24h": r["n_tx_24h"]} for r in ROWS[:2]]
    body = {"signature_name": "classify", "context": context, "examples": examples}
    r = _post(server, "/v1/models/fraud:classify", body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    rows = [{**row, "timestamp": ROWS[0]["timestamp"]} for row in ROWS[:2]]
    for result, p in zip(results, expected_scores(2, rows), strict=True):
        assert [label for label, _ in result] == ["legit", "fraud"]
        assert abs(result[1][1] - p) < 1e-5 and abs(result[0][1] - (1 - p)) < 1e-5

    body = {"signature_name": "regress", "examples": ROWS}
    r = _post(server, "/v1/models/fraud/versions/1:regress", body)
    assert r.status_code == 200, r.text
    assert _close(r.json()["results"], expected_scores(1))

    # serving_default takes named tensors, not tf.Examples: TF Serving's error, as a 400.
    r = _post(server, "/v1/models/fraud:classify", {"examples": ROWS})
    assert r.status_code == 400
    assert r.json() == {"error": "Expected one input Tensor."}
    r = _post(server, "/v1/models/fraud:regress", {"signature_name": "nope", "examples": ROWS})
    assert r.status_code == 400
    assert "No signature was found with the name: nope" in r.json()["error"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited protobuf field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(row: dict[str, Any]) -> bytes:
    """A serialized tf.Example, hand-encoded so that the test process needs no TensorFlow."""
    features = b""
    for name, value in row.items():
        if isinstance(value, float):
            feature = _field(2, _field(1, struct.pack("<f", value)))  # float_list, packed
        elif isinstance(value, int):
            feature = _field(3, _field(1, _varint(value)))  # int64_list, packed
        else:
            feature = _field(1, _field(1, value.encode()))  # bytes_list
        features += _field(1, _field(1, name.encode()) + _field(2, feature))  # map entry
    return _field(1, features)


def test_predict_multiple_and_string_outputs(server: ServerProcess) -> None:
    # The classify signature has two outputs (string classes, float scores): in the row format
    # each prediction is an object, in the columnar one "outputs" is keyed by output name.
    b64 = [{"b64": base64.b64encode(_example(r)).decode()} for r in ROWS]
    body = {"signature_name": "classify", "instances": b64}
    r = _post(server, "/v1/models/fraud:predict", body)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["classes"] for p in predictions] == [["legit", "fraud"]] * len(ROWS)
    assert _close([p["scores"][1] for p in predictions], expected_scores(2))
    r = _post(server, "/v1/models/fraud:predict", {"signature_name": "classify", "inputs": b64})
    outputs = r.json()["outputs"]
    assert set(outputs) == {"classes", "scores"}
    assert _close([s[1] for s in outputs["scores"]], expected_scores(2))


# --- bad requests -----------------------------------------------------------------------------------

_ROW = ROWS[0]
BAD_REQUESTS = [
    # (id, method, path, body, status, substrings the error must contain)
    ("malformed-json", "POST", "/v1/models/fraud:predict", b'{"instances": [', 400, ["JSON Parse error"]),
    ("empty-body", "POST", "/v1/models/fraud:predict", b"", 400, ["document is empty"]),
    ("not-an-object", "POST", "/v1/models/fraud:predict", b"[1, 2]", 400, ["Is not object"]),
    ("unknown-model", "POST", "/v1/models/nope:predict", {"instances": ROWS}, 404,
     ["Servable not found for request: Latest(nope)"]),
    ("unknown-version", "POST", "/v1/models/fraud/versions/9:predict", {"instances": ROWS}, 404,
     ["Servable not found for request: Specific(fraud, 9)"]),
    ("unknown-label", "POST", "/v1/models/fraud/labels/zz:predict", {"instances": ROWS}, 400,
     ["Unrecognized servable version label: zz"]),
    ("row-unexpected-name", "POST", "/v1/models/fraud:predict",
     {"instances": [{**_ROW, "amountt": 1.0}]}, 400, ["amountt", "Sent extra"]),
    ("row-missing-name", "POST", "/v1/models/fraud:predict",
     {"instances": [{"amount": 1.0, "n_tx_24h": 1}]}, 400, ["Missing but required: {timestamp}"]),
    ("columnar-wrong-names", "POST", "/v1/models/fraud:predict",
     {"inputs": {"amount": [1.0], "n_tx": [1], "timestamp": ["x"]}}, 400,
     ["Sent extra: {n_tx}", "Missing but required: {n_tx_24h}"]),
    ("string-for-float", "POST", "/v1/models/fraud:predict",
     {"instances": [{**_ROW, "amount": "abc"}]}, 400, ["key: amount", "is not of expected type: float"]),
    ("float-for-int", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "n_tx_24h": [1.5]}}, 400, ["n_tx_24h", "int64"]),
    ("number-for-string", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "timestamp": [5]}}, 400, ["timestamp", "string"]),
    ("null-value", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "amount": [None]}}, 400, ["amount", "Null"]),
    ("int-overflow", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "n_tx_24h": [2**63 + 5]}}, 400, ["n_tx_24h"]),
    ("ragged-columnar", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "amount": [[1.0, 2.0], [3.0]]}}, 400,
     ["amount", "Encountered list at unexpected size: 1 at level: 1 expected size: 2"]),
    # The declared shape is not checked (as in TF Serving); the graph's own ops refuse it.
    ("wrong-rank", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "amount": [[1.0]]}}, 400, ["Shapes of all inputs must match"]),
    ("mismatched-batch", "POST", "/v1/models/fraud:predict",
     {"inputs": {"amount": [1.0, 2.0], "n_tx_24h": [1], "timestamp": [_ROW["timestamp"]]}}, 400, []),
    ("both-formats", "POST", "/v1/models/fraud:predict", {"instances": ROWS, "inputs": {}}, 400,
     ["expecting only one of 'inputs' or 'instances'"]),
    ("no-inputs", "POST", "/v1/models/fraud:predict", {"signature_name": "serving_default"}, 400,
     ["Missing 'inputs' or 'instances' key"]),
    ("empty-instances", "POST", "/v1/models/fraud:predict", {"instances": []}, 400,
     ["No values in 'instances' array"]),
    ("signature-not-string", "POST", "/v1/models/fraud:predict", {"signature_name": 5, "instances": ROWS},
     400, ["'signature_name' key must be a string value."]),
    ("unknown-signature", "POST", "/v1/models/fraud:predict", {"signature_name": "x", "instances": ROWS},
     400, ['Serving signature name: "x" not found in signature def']),
    ("bad-b64", "POST", "/v1/models/fraud:predict",
     {"inputs": {**columns([_ROW]), "timestamp": [{"b64": "***"}]}}, 400, ["base64"]),
    ("huge-body", "POST", "/v1/models/fraud:predict", b'{"instances": "' + b"x" * (2 * MAX_BODY) + b'"}',
     413, ["--rest_api_max_request_bytes"]),
    ("get-on-predict", "GET", "/v1/models/fraud:predict", None, 400, ["Malformed request: GET"]),
    ("put", "PUT", "/v1/models/fraud", b"{}", 400, ["Malformed request: PUT"]),
    ("post-on-status", "POST", "/v1/models/fraud", b"{}", 400, ["Malformed request: POST"]),
    ("no-model-name", "GET", "/v1/models", None, 400, ["Missing model name in request."]),
    ("huge-version", "POST", "/v1/models/fraud/versions/99999999999999999999:predict",
     {"instances": ROWS}, 400, ["Failed to convert version"]),
    ("examples-missing", "POST", "/v1/models/fraud:classify", {"instances": ROWS}, 400,
     ["key 'examples' is expected"]),
    ("not-v1", "GET", "/v2/models/fraud", None, 404, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needles"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_json_error(
    server: ServerProcess, method: str, path: str, body: Any, status: int, needles: list[str]
) -> None:
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    r = requests.request(method, server.url + path, data=data, timeout=10)
    assert r.status_code == status, r.text
    assert 400 <= r.status_code < 500
    doc = r.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
    for needle in needles:
        assert needle in doc["error"]
    # ... and the server is still fine.
    assert _get(server, "/v1/models/fraud").status_code == 200


# --- versions: hot swap, failures, partial directories --------------------------------------------


def test_hot_swap_under_load_loses_no_request(
    server: ServerProcess, base: Path, store: Path
) -> None:
    stop = threading.Event()
    errors: list[str] = []
    pinned_answers: list[tuple[str, list[float]]] = []
    unpinned_answers: list[list[float]] = []
    lock = threading.Lock()

    def client_loop() -> None:
        # The platform's client: resolves a concrete version, so it knows who answered.
        client = ModelClient(server.url, "hot", version_refresh_s=0.05, timeout_s=10)
        while not stop.is_set():
            try:
                result = client.predict(ROWS)
                with lock:
                    pinned_answers.append((result.model_version, list(result.scores)))
            except Exception as exc:
                with lock:
                    errors.append(f"client: {exc!r}")

    def raw_loop() -> None:
        # Plain unpinned REST calls, as any TF Serving user would make them.
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(
                    server.url + "/v1/models/hot:predict", json={"instances": ROWS}, timeout=10
                )
                if r.status_code != 200:
                    raise AssertionError(f"HTTP {r.status_code}: {r.text}")
                with lock:
                    unpinned_answers.append(_flat(r.json()["predictions"]))
            except Exception as exc:
                with lock:
                    errors.append(f"raw: {exc!r}")

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    threads += [threading.Thread(target=raw_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        install_version(store, base / "hot", 2)
        wait_for(lambda: version_states(server.url, "hot") == {2: "AVAILABLE", 1: "END"},
                 what="v2 to replace v1")  # fmt: skip
        time.sleep(0.5)
        install_version(store, base / "hot", 3)
        wait_for(lambda: version_states(server.url, "hot").get(3) == "AVAILABLE", what="v3")
        wait_for(lambda: version_states(server.url, "hot").get(2) == "END", what="v2 unloaded")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert errors == []
    assert len(pinned_answers) > 20 and len(unpinned_answers) > 20
    seen = {version for version, _ in pinned_answers}
    assert seen <= {"1", "2", "3"} and {"1", "3"} <= seen
    for version, scores in pinned_answers:  # the reported version really is the one that answered
        assert _close(scores, expected_scores(int(version))), (version, scores)
    for scores in unpinned_answers:
        assert any(_close(scores, expected_scores(v)) for v in (1, 2, 3)), scores
    assert version_states(server.url, "hot") == {3: "AVAILABLE", 2: "END", 1: "END"}


def test_failed_version_keeps_old_one_serving(
    server: ServerProcess, base: Path, store: Path
) -> None:
    install_broken_version(base / "flaky", 2)
    wait_for(lambda: version_states(server.url, "flaky").get(2) == "END", what="v2 to fail")
    statuses = {
        v["version"]: v for v in _get(server, "/v1/models/flaky").json()["model_version_status"]
    }
    assert statuses["1"]["state"] == "AVAILABLE"
    assert statuses["2"]["status"]["error_code"] not in ("", "OK")
    assert "SavedModel" in statuses["2"]["status"]["error_message"]
    r = _post(server, "/v1/models/flaky:predict", {"instances": ROWS})
    assert r.status_code == 200 and _close(_flat(r.json()["predictions"]), expected_scores(1))
    time.sleep(3 * POLL_S)  # an unchanged broken dir is not retried over and over
    assert version_states(server.url, "flaky") == {2: "END", 1: "AVAILABLE"}

    # Fixing the directory (its content changes) gets it loaded.
    shutil.rmtree(base / "flaky" / "2")
    install_version(store, base / "flaky", 2)
    wait_for(lambda: version_states(server.url, "flaky") == {2: "AVAILABLE", 1: "END"},
             what="fixed v2")  # fmt: skip
    statuses = _get(server, "/v1/models/flaky/versions/2").json()["model_version_status"]
    assert statuses[0]["status"] == {"error_code": "OK", "error_message": ""}

    # A version whose shipped warm-up requests cannot be replayed is not served either.
    staging = base / "flaky" / ".tmp-3"
    shutil.copytree(store / "1", staging)
    (staging / "assets.extra").mkdir()
    (staging / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"not a TFRecord")
    staging.rename(base / "flaky" / "3")
    wait_for(lambda: version_states(server.url, "flaky").get(3) == "END", what="v3 to fail")
    failed = _get(server, "/v1/models/flaky/versions/3").json()["model_version_status"][0]
    assert "warm-up" in failed["status"]["error_message"]
    assert version_states(server.url, "flaky")[2] == "AVAILABLE"


def test_partial_and_staging_directories_are_ignored(
    server: ServerProcess, base: Path, store: Path
) -> None:
    root = base / "partial"
    half = root / "2"
    shutil.copytree(store / "2" / "variables", half / "variables")  # no saved_model.pb yet
    shutil.copytree(store / "3", root / ".tmp-3")
    shutil.copytree(store / "3", root / "tmp4")
    shutil.copytree(store / "3", root / "5.partial")
    time.sleep(5 * POLL_S)
    assert version_states(server.url, "partial") == {1: "AVAILABLE"}
    # The writer finishes: the graph file lands last, and only then is the version picked up.
    shutil.copy2(store / "2" / "saved_model.pb", half / "saved_model.pb")
    wait_for(lambda: version_states(server.url, "partial").get(2) == "AVAILABLE", what="v2")
    r = _post(server, "/v1/models/partial:predict", {"instances": ROWS})
    assert _close(_flat(r.json()["predictions"]), expected_scores(2))


def test_config_reload_moves_labels_and_policies(server: ServerProcess, base: Path) -> None:
    config = base / "models.config"
    original = config.read_text()

    def stable_version() -> str:
        return _get(server, "/v1/models/fraud/labels/stable").json()["model_version_status"][0][
            "version"
        ]

    try:
        write_atomically(config, _models(base, {"stable": 2, "canary": 2}))
        wait_for(lambda: stable_version() == "2", what="stable -> 2")
        r = _post(server, "/v1/models/fraud/labels/stable:predict", {"instances": ROWS})
        assert _close(_flat(r.json()["predictions"]), expected_scores(2))

        # A label on a version that is not AVAILABLE is refused; the old label stays.
        write_atomically(config, _models(base, {"stable": 9}))
        time.sleep(1.5)
        assert stable_version() == "2"

        write_atomically(config, _models(base, policy="all {}"))
        wait_for(
            lambda: (
                version_states(server.url, "policy")
                == {3: "AVAILABLE", 2: "AVAILABLE", 1: "AVAILABLE"}
            ),
            what="policy all",
        )
        write_atomically(config, _models(base, policy="specific { versions: 1 }"))
        wait_for(
            lambda: version_states(server.url, "policy") == {3: "END", 2: "END", 1: "AVAILABLE"},
            what="policy specific {1}",
        )
    finally:
        write_atomically(config, original)
    wait_for(lambda: stable_version() == "1", what="labels restored")


# --- monitoring / process -------------------------------------------------------------------------


def test_prometheus_metrics(server: ServerProcess) -> None:
    assert _post(server, "/v1/models/fraud/versions/1:predict", {"instances": ROWS}).ok
    assert _post(server, "/v1/models/fraud:predict", b"{").status_code == 400
    r = _get(server, "/monitoring/prometheus/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert ':tensorflow:serving:request_count{model_name="fraud",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="fraud",status="INVALID_ARGUMENT"}' in text
    assert ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="REST"' in text
    assert (
        'serving_requests_total{api="predict",model_name="fraud",status="OK",version="1"}' in text
    )
    assert (
        'serving_request_latency_seconds_count{api="predict",model_name="fraud",version="1"}'
        in text
    )
    assert 'serving_model_version_available{model_name="fraud",version="1"} 1.0' in text
    assert 'serving_model_version_available{model_name="fraud",version="2"} 1.0' in text
    assert 'serving_model_latest_version{model_name="fraud"} 2.0' in text
    assert "process_cpu_seconds_total" in text


def test_grpc_port_is_accepted_and_logged(server: ServerProcess) -> None:
    assert "(gRPC) accepted but not served" in server.log_text()


def test_shipped_warmup_requests_are_replayed(server: ServerProcess) -> None:
    # Version 3 of the test models ships assets.extra/tf_serving_warmup_requests.
    assert "replayed 2 warm-up records for policy version 3" in server.log_text()


def test_label_on_unavailable_version_fails_startup(tmp_path: Path, store: Path) -> None:
    install_version(store, tmp_path / "m", 1)
    config = tmp_path / "models.config"
    config.write_text(
        model_config([{"name": "m", "base_path": tmp_path / "m", "labels": {"next": 2}}])
    )
    done = run_to_exit([f"--model_config_file={config}", "--rest_api_port=0"])
    assert done.returncode == 1
    assert "Failed to start server. Error: FAILED_PRECONDITION" in done.stderr
    assert "Request to assign label to version 2 of model m" in done.stderr


# --- conversion rules (in-process, no server) -----------------------------------------------------


def _info(kind: str, dtype: str, shape: tuple[int | None, ...] | None = (None,)) -> Any:
    import numpy as np

    from serving._json_tensor import TensorInfo

    dt_name = {"float32": "float", "float64": "double", "object": "string"}.get(dtype, dtype)
    return TensorInfo("x", dt_name, kind, np.dtype(dtype), shape)


def test_conversion_rules() -> None:
    import numpy as np

    from serving._codec import inputs_from_columns, inputs_from_instances
    from serving._errors import ServingError
    from serving._json_tensor import to_array

    f32, i32 = _info("float", "float32"), _info("int", "int32")
    assert to_array([1, 2.5], f32).dtype == np.float32
    with pytest.raises(ServingError, match="without loss of precision"):
        to_array([2**25], f32)  # float32 cannot hold it exactly
    with pytest.raises(ServingError, match="without loss of precision"):
        to_array([1e39], f32)
    with pytest.raises(ServingError, match="out of range for int32"):
        to_array([2**31], i32)
    with pytest.raises(ServingError, match="is not of expected type: bool"):
        to_array([True, 1], _info("bool", "bool"))
    strings = _info("string", "object", (None, 2))
    assert to_array([["a", {"b64": "YWI"}]], strings).tolist() == [["a", b"ab"]]  # unpadded b64
    with pytest.raises(ServingError, match="unexpected size: 1 at level: 1 expected size: 2"):
        to_array([["a", "b"], ["c"]], strings)
    # The declared shape is the graph's business, not the codec's (TF Serving's semantics).
    assert to_array([1.0], _info("float", "float32", (None, 3))).shape == (1,)

    # Same-spec inputs are converted together; the result equals one-by-one conversion.
    specs = {"a": f32, "b": f32, "s": _info("string", "object")}
    cols = inputs_from_columns({"a": [1, 2], "b": [3.5, 4], "s": ["x", "y"]}, specs, "m")
    assert cols.rows == 2
    rows = inputs_from_instances(
        [{"a": 1, "b": 3.5, "s": "x"}, {"a": 2, "b": 4, "s": "y"}], specs, "m"
    )
    for name in specs:
        assert cols.arrays[name].tolist() == rows.arrays[name].tolist()
    # A bad value inside a stacked group still gets its precise, per-input message.
    with pytest.raises(ServingError, match="Failed to process element: 1 key: b"):
        inputs_from_instances(
            [{"a": 1, "b": 3.5, "s": "x"}, {"a": 2, "b": "4", "s": "y"}], specs, "m"
        )
