"""The embedded model server's gRPC API (``--port``) against TF Serving's gRPC semantics, and the
TensorFlow-free gRPC client.

One server subprocess serves, from a model_config_file:

* ``fraud``   the tiny model, versions 1 and 2, labels stable->1, canary->2;
* ``tensors`` an identity model over several dtypes (``serving._example_models``);
* ``half``    TF Serving's half_plus_two (``x`` declared ``[-1, 1]``).

Requests are built with the light message stubs (``serving._tfs_protos``), so the test process
never imports TensorFlow, and every status is checked as a gRPC status code, as TF Serving
returns its canonical ``Status``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from serving_fixtures import ROWS, ServerProcess, columns, expected_scores, model_config
from stream_fixtures import ModelStore, install_version, wait_for

from serving._launch import child_env, run_to_exit
from serving._tfs_protos.tensorflow.core.example import example_pb2
from serving._tfs_protos.tensorflow.core.framework import tensor_pb2, types_pb2
from serving._tfs_protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)
from serving.client import ModelClient, ServingUnavailableError
from serving.grpc_client import (
    GET_MODEL_METADATA,
    GET_MODEL_STATUS,
    PREDICT,
    GrpcModelClient,
    ServingRPCError,
    to_numpy,
)

POLL_S = 0.2
CLASSIFY = "/tensorflow.serving.PredictionService/Classify"
REGRESS = "/tensorflow.serving.PredictionService/Regress"
_RESPONSES = {
    PREDICT: predict_pb2.PredictResponse,
    CLASSIFY: classification_pb2.ClassificationResponse,
    REGRESS: regression_pb2.RegressionResponse,
    GET_MODEL_METADATA: get_model_metadata_pb2.GetModelMetadataResponse,
    GET_MODEL_STATUS: get_model_status_pb2.GetModelStatusResponse,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    """The served models' base paths and config files."""
    root = tmp_path_factory.mktemp("grpc")
    for kind in ("tensors", "half_plus_two"):
        subprocess.run(
            [sys.executable, "-m", "serving._example_models", kind, str(root / kind)]
            + ["--version", "1"],
            check=True,
            env=child_env(),
            capture_output=True,
        )
    for version in (1, 2):
        install_version(model_store.example, root / "fraud", version)
    models = [
        {
            "name": "fraud",
            "base_path": root / "fraud",
            "policy": "specific { versions: 1 versions: 2 }",
            "labels": {"stable": 1, "canary": 2},
        },
        {"name": "tensors", "base_path": root / "tensors"},
        {"name": "half", "base_path": root / "half_plus_two"},
        {"name": "hot", "base_path": root / "hot"},
    ]
    install_version(model_store.example, root / "hot", 1)
    (root / "models.config").write_text(model_config(models))
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return root


@pytest.fixture(scope="module")
def server(root: Path):
    args = [
        f"--model_config_file={root / 'models.config'}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        f"--file_system_poll_wait_seconds={POLL_S}",
    ]
    with ServerProcess(args) as proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"


@pytest.fixture(scope="module")
def channel(server: ServerProcess):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def _rpc(channel: grpc.Channel, method: str, request: Any) -> Any:
    call = channel.unary_unary(
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=_RESPONSES[method].FromString,
    )
    return call(request, timeout=60)


def _refused(channel: grpc.Channel, method: str, request: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        _rpc(channel, method, request)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def _tensor(values: Any, dtype: int, shape: tuple[int, ...] | None = None) -> Any:
    arr = np.asarray(values)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in arr.shape if shape is None else shape:
        proto.tensor_shape.dim.add(size=size)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v.encode() for v in arr.ravel())
    else:
        proto.tensor_content = arr.tobytes()
    return proto


def _fraud_request(rows: list[dict[str, Any]] = ROWS, **spec: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "fraud")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    cols = columns(rows)
    request.inputs["amount"].CopyFrom(
        _tensor(np.asarray(cols["amount"], np.float32), types_pb2.DT_FLOAT)
    )
    request.inputs["n_tx_24h"].CopyFrom(
        _tensor(np.asarray(cols["n_tx_24h"], np.int64), types_pb2.DT_INT64)
    )
    request.inputs["timestamp"].CopyFrom(_tensor(cols["timestamp"], types_pb2.DT_STRING))
    return request


def _scores(response: Any) -> list[float]:
    return to_numpy(response.outputs["fraud_probability"]).ravel().tolist()


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- Predict --------------------------------------------------------------------------------------


def test_predict_answers_with_typed_values_and_the_model_spec(channel: grpc.Channel) -> None:
    response = _rpc(channel, PREDICT, _fraud_request())
    assert _close(_scores(response), expected_scores(2))
    out = response.outputs["fraud_probability"]
    # TF Serving answers with Tensor::AsProtoField: typed values, no tensor_content.
    assert out.dtype == types_pb2.DT_FLOAT and not out.tensor_content
    assert len(out.float_val) == len(ROWS)
    assert [d.size for d in out.tensor_shape.dim] == [len(ROWS), 1]
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("fraud", 2, "serving_default")


@pytest.mark.parametrize(
    ("spec", "version"),
    [({"version": 1}, 1), ({"version_label": "stable"}, 1), ({"version_label": "canary"}, 2)],
)
def test_version_and_label_selection(
    channel: grpc.Channel, spec: dict[str, Any], version: int
) -> None:
    response = _rpc(channel, PREDICT, _fraud_request(**spec))
    assert response.model_spec.version.value == version
    assert _close(_scores(response), expected_scores(version))


@pytest.mark.parametrize(
    ("spec", "code", "text"),
    [
        (
            {"version_label": "nope"},
            "INVALID_ARGUMENT",
            "Unrecognized servable version label: nope",
        ),
        ({"version": 7}, "NOT_FOUND", "Servable not found for request: Specific(fraud, 7)"),
        ({"name": "ghost"}, "NOT_FOUND", "Servable not found for request: Latest(ghost)"),
        ({"name": ""}, "INVALID_ARGUMENT", "ModelSpec has no name specified."),
        (
            {"signature_name": "nope"},
            "FAILED_PRECONDITION",
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_model_spec_errors(
    channel: grpc.Channel, spec: dict[str, Any], code: str, text: str
) -> None:
    details = _refused(channel, PREDICT, _fraud_request(**spec), grpc.StatusCode[code])
    assert details == text


def test_input_errors_name_the_input(channel: grpc.Channel) -> None:
    request = predict_pb2.PredictRequest(inputs=_fraud_request().inputs)
    assert _refused(channel, PREDICT, request, grpc.StatusCode.INVALID_ARGUMENT) == (
        "Missing ModelSpec"
    )

    missing = _fraud_request()
    del missing.inputs["timestamp"]
    details = _refused(channel, PREDICT, missing, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("input size does not match signature: 2!=3")
    assert "Missing but required: {timestamp}." in details

    renamed = _fraud_request()
    renamed.inputs["when"].CopyFrom(renamed.inputs["timestamp"])
    del renamed.inputs["timestamp"]
    details = _refused(channel, PREDICT, renamed, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("input tensor alias not found in signature: when.")

    # A double fed to a float input: the session refuses it in TF Serving; no silent cast here.
    double = _fraud_request()
    double.inputs["amount"].CopyFrom(_tensor(np.asarray([1.0, 2.0, 3.0]), types_pb2.DT_DOUBLE))
    details = _refused(channel, PREDICT, double, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "Input amount: expects a float tensor but double is provided"

    torn = _fraud_request()
    torn.inputs["amount"].tensor_content = b"\x00" * 5  # 3 floats announced, 5 bytes sent
    details = _refused(channel, PREDICT, torn, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("tensor parsing error: amount")

    # The graph judges the values: a timestamp it cannot parse is its error, as in TF Serving.
    bad = _fraud_request([{**ROWS[0], "timestamp": "yesterday"}])
    assert _refused(channel, PREDICT, bad, grpc.StatusCode.INVALID_ARGUMENT)


def test_output_filter(channel: grpc.Channel) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "tensors", "pair"
    request.inputs["x"].CopyFrom(_tensor(np.asarray([1.0, 2.0], np.float32), types_pb2.DT_FLOAT))
    assert set(_rpc(channel, PREDICT, request).outputs) == {"a", "b"}
    request.output_filter.append("b")
    response = _rpc(channel, PREDICT, request)
    assert list(response.outputs) == ["b"]
    assert to_numpy(response.outputs["b"]).tolist() == [2.0, 4.0]
    request.output_filter.append("b")
    details = _refused(channel, PREDICT, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "duplicate output tensor alias: b"
    request.output_filter[:] = ["z"]
    details = _refused(channel, PREDICT, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert (
        details
        == "output tensor alias not found in signature: z Outputs expected to be in the set {a,b}."
    )


@pytest.mark.parametrize(
    ("signature", "dtype", "values", "field"),
    [
        (
            "float32",
            types_pb2.DT_FLOAT,
            np.asarray([[1.5, -2.0], [np.nan, np.inf]], np.float32),
            "float_val",
        ),
        ("float64", types_pb2.DT_DOUBLE, np.asarray([[0.1, 1e300]]), "double_val"),
        ("int32", types_pb2.DT_INT32, np.asarray([[-(2**31), 2**31 - 1]], np.int32), "int_val"),
        ("int64", types_pb2.DT_INT64, np.asarray([[-(2**63)], [2**63 - 1]], np.int64), "int64_val"),
        ("uint64", types_pb2.DT_UINT64, np.asarray([2**64 - 1, 0], np.uint64), "uint64_val"),
        ("bool", types_pb2.DT_BOOL, np.asarray([[True, False, True]]), "bool_val"),
        ("string", types_pb2.DT_STRING, np.asarray([["a", "é"], ["", "z"]]), "string_val"),
    ],
)
def test_identity_over_dtypes(
    channel: grpc.Channel, signature: str, dtype: int, values: np.ndarray, field: str
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "tensors", signature
    request.inputs["x"].CopyFrom(_tensor(values, dtype))
    out = _rpc(channel, PREDICT, request).outputs["y"]
    assert out.dtype == dtype and len(getattr(out, field)) == values.size
    got = to_numpy(out)
    assert got.shape == values.shape
    if dtype == types_pb2.DT_STRING:
        assert got.tolist() == [[v.encode() for v in row] for row in values.tolist()]
    else:
        np.testing.assert_array_equal(got, values)


def test_complex_outputs_travel_over_grpc(channel: grpc.Channel) -> None:
    # JSON cannot carry them (REST answers 400); a TensorProto can.
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "tensors", "complex"
    request.inputs["x"].CopyFrom(_tensor(np.asarray([1.0, 2.0], np.float32), types_pb2.DT_FLOAT))
    out = _rpc(channel, PREDICT, request).outputs["c"]
    assert out.dtype == types_pb2.DT_COMPLEX64
    assert list(out.scomplex_val) == [1.0, 1.0, 2.0, 2.0]  # AsProtoField: interleaved parts


def test_the_declared_shape_is_not_checked(channel: grpc.Channel) -> None:
    # TF Serving's README example: x is declared [-1, 1]; a [3] tensor runs all the same.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].CopyFrom(
        _tensor(np.asarray([1.0, 2.0, 5.0], np.float32), types_pb2.DT_FLOAT)
    )
    assert to_numpy(_rpc(channel, PREDICT, request).outputs["y"]).tolist() == [2.5, 3.0, 4.5]


# --- Classify / Regress ---------------------------------------------------------------------------


def _example(row: dict[str, Any]) -> Any:
    example = example_pb2.Example()
    for name, value in row.items():
        feature = example.features.feature[name]
        if isinstance(value, float):
            feature.float_list.value.append(value)
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode())
    return example


def test_classify_with_context_and_regress(channel: grpc.Channel) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "fraud", "classify"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(_example({"timestamp": ROWS[0]["timestamp"]}))
    for row in ROWS[:2]:
        with_context.examples.append(_example({k: row[k] for k in ("amount", "n_tx_24h")}))
    response = _rpc(channel, CLASSIFY, request)
    rows = [{**row, "timestamp": ROWS[0]["timestamp"]} for row in ROWS[:2]]
    for result, p in zip(response.result.classifications, expected_scores(2, rows), strict=True):
        assert [c.label for c in result.classes] == ["legit", "fraud"]
        assert _close([c.score for c in result.classes], [1 - p, p])
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (
        2,
        "classify",
    )

    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "fraud", "regress"
    request.model_spec.version.value = 1
    request.input.example_list.examples.extend(_example(row) for row in ROWS)
    values = [r.value for r in _rpc(channel, REGRESS, request).result.regressions]
    assert _close(values, expected_scores(1))


def test_classify_and_regress_errors(channel: grpc.Channel) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "fraud"
    request.input.example_list.examples.append(_example(ROWS[0]))
    # serving_default takes named tensors, not tf.Examples.
    details = _refused(channel, CLASSIFY, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "Expected one input Tensor."
    request.model_spec.signature_name = "classify"
    request.input.example_list.ClearField("examples")
    assert _refused(channel, CLASSIFY, request, grpc.StatusCode.INVALID_ARGUMENT) == (
        "Input is empty."
    )
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "fraud", "nope"
    request.input.example_list.examples.append(_example(ROWS[0]))
    details = _refused(channel, REGRESS, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "No signature was found with the name: nope"


# --- GetModelMetadata / GetModelStatus --------------------------------------------------------------


def test_metadata_is_the_signature_def_map(server: ServerProcess, channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "fraud"
    request.model_spec.version_label = "stable"
    response = _rpc(channel, GET_MODEL_METADATA, request)
    assert (response.model_spec.name, response.model_spec.version.value) == ("fraud", 1)
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    sig_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    inputs = sig_map.signature_def["serving_default"].inputs
    assert {k: v.dtype for k, v in inputs.items()} == {
        "amount": types_pb2.DT_FLOAT,
        "n_tx_24h": types_pb2.DT_INT64,
        "timestamp": types_pb2.DT_STRING,
    }
    # The same document as the REST API's, through the client's JSON rendering.
    rest = ModelClient(server.url, "fraud", label="stable").metadata()
    assert GrpcModelClient(server.grpc_target, "fraud", label="stable").metadata() == rest

    request.ClearField("metadata_field")
    assert _refused(channel, GET_MODEL_METADATA, request, grpc.StatusCode.INVALID_ARGUMENT) == (
        "GetModelMetadataRequest must specify at least one metadata_field"
    )
    request.metadata_field.append("foo")
    assert _refused(channel, GET_MODEL_METADATA, request, grpc.StatusCode.INVALID_ARGUMENT) == (
        "Metadata field foo is not supported"
    )


def test_model_status(server: ServerProcess, channel: grpc.Channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fraud"
    response = _rpc(channel, GET_MODEL_STATUS, request)
    available = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, available),
        (1, available),
    ]
    rest = requests.get(f"{server.url}/v1/models/fraud", timeout=10).json()
    assert GrpcModelClient(server.grpc_target, "fraud").status() == rest

    request.model_spec.version_label = "stable"
    response = _rpc(channel, GET_MODEL_STATUS, request)
    assert [s.version for s in response.model_version_status] == [1]
    request.model_spec.version.value = 9
    assert _refused(channel, GET_MODEL_STATUS, request, grpc.StatusCode.NOT_FOUND) == (
        "Could not find version 9 of model fraud"
    )


def test_grpc_requests_are_counted_in_the_metrics(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    _rpc(channel, PREDICT, _fraud_request(version_label="stable"))
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    assert (
        ':tensorflow:serving:request_latency_count{API="predict",entrypoint="GRPC",'
        'model_name="fraud"}'
    ) in text
    assert 'serving_requests_total{api="predict",model_name="fraud",status="OK",version="1"}' in (
        text
    )


# --- the client -----------------------------------------------------------------------------------


def test_client_scores_as_the_rest_client_does(server: ServerProcess) -> None:
    grpc_client = GrpcModelClient(server.grpc_target, "fraud", output_key=None)
    rest_client = ModelClient(server.url, "fraud", output_key=None)
    assert grpc_client.wait_until_available(timeout_s=30) == "2"
    for rows in (ROWS, columns(ROWS)):
        got, want = grpc_client.predict(rows), rest_client.predict(rows)
        assert got.model_version == want.model_version == "2"
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    pinned = GrpcModelClient(server.grpc_target, "fraud", label="stable", output_key=None)
    assert pinned.predict(ROWS).model_version == "1"
    assert pinned.current_version() == "1"


def test_client_refuses_values_the_input_cannot_hold(server: ServerProcess) -> None:
    client = GrpcModelClient(server.grpc_target, "fraud", output_key=None)
    with pytest.raises(ServingRPCError) as caught:
        client.predict([{**ROWS[0], "amount": 1e39}])
    err = caught.value
    assert (err.code, err.status_code) == ("INVALID_ARGUMENT", 400)
    assert "amount" in err.message and "float" in err.message
    # A status from the server keeps its code, and the HTTP status TF Serving's REST gives it.
    with pytest.raises(ServingRPCError) as caught:
        GrpcModelClient(server.grpc_target, "fraud", version=7).predict(ROWS)
    assert (caught.value.code, caught.value.status_code) == ("NOT_FOUND", 404)


def test_a_hot_swap_costs_no_call_even_without_retries(
    server: ServerProcess, root: Path, model_store: ModelStore
) -> None:
    """The answer names its version, so nothing is resolved beforehand that a swap could
    invalidate: with max_retries=0 every call during the swap succeeds, scored by the version
    it names."""
    client = GrpcModelClient(server.grpc_target, "hot", max_retries=0, output_key=None)
    answers: list[tuple[str, list[float]]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                result = client.predict(ROWS)
            except Exception as exc:
                errors.append(exc)
            else:
                answers.append((result.model_version, result.scores.tolist()))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        install_version(model_store.example, root / "hot", 2)
        wait_for(lambda: answers and answers[-1][0] == "2", 60, "version 2 answering")
        count = len(answers)
        wait_for(lambda: len(answers) > count + 20, 60, "more answers after the swap")
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors[:3]
    assert {version for version, _ in answers} == {"1", "2"}
    for version, scores in answers:
        assert _close(scores, expected_scores(int(version)))


def test_client_retries_then_names_an_unreachable_server() -> None:
    from serving._launch import free_port

    client = GrpcModelClient(
        f"127.0.0.1:{free_port()}", "fraud", max_retries=1, backoff_s=0.01, timeout_s=1.0
    )
    with pytest.raises(ServingUnavailableError, match="2 attempts.*UNAVAILABLE"):
        client.predict(ROWS)


def test_light_stubs_and_tensorflow_share_one_process() -> None:
    """The client imports no TensorFlow; and its stubs, under their own file and package names,
    register beside TensorFlow's and tensorflow-serving-api's own in one descriptor pool."""
    script = (
        "import sys\n"
        "import serving.grpc_client\n"
        "assert 'tensorflow' not in sys.modules, 'the gRPC client imported TensorFlow'\n"
        "from tensorflow_serving.apis import predict_pb2\n"
        "import tensorflow as tf\n"
        "from serving._tfs_protos.tensorflow_serving.apis import predict_pb2 as light\n"
        "request = predict_pb2.PredictRequest()\n"
        "request.inputs['x'].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))\n"
        "back = light.PredictRequest.FromString(request.SerializeToString())\n"
        "print(serving.grpc_client.to_numpy(back.inputs['x']).tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[1.0, 2.0]"


# --- flags ----------------------------------------------------------------------------------------


def test_port_zero_is_refused_as_tf_serving_needs_grpc(tmp_path) -> None:
    done = run_to_exit([f"--model_base_path={tmp_path}", "--port=0"])
    assert done.returncode == 1
    assert "--port (gRPC) must be in [1, 65535], got 0" in done.stderr


def test_rest_api_port_zero_serves_grpc_only(model_store: ModelStore, tmp_path) -> None:
    from serving._launch import REPO_ROOT, free_port

    install_version(model_store.example, tmp_path / "fraud", 1)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.model_server", "--model_name=fraud"]
            + [f"--model_base_path={tmp_path / 'fraud'}", "--rest_api_port=0", f"--port={port}"],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = GrpcModelClient(f"127.0.0.1:{port}", "fraud", output_key=None)
        assert client.wait_until_available(timeout_s=120) == "1"
        assert _close(client.predict(ROWS).scores.tolist(), expected_scores(1))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    text = log.read_text()
    assert f"Running gRPC ModelServer at 127.0.0.1:{port} ..." in text
    assert "Exporting HTTP/REST API" not in text
