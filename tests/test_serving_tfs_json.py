"""The JSON of the embedded model server against what TF Serving's json_tensor.cc specifies.

Cases follow tensorflow_serving/util/json_tensor.cc and its tests: values (NaN / Infinity,
TF Serving's float precision, zero-sized outputs, several named outputs, types JSON cannot
carry) and error texts (ragged or mixed instances, malformed JSON, uint64 features). One server
subprocess serves an identity model over several dtypes (``tensors``) and the tiny fraud model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import orjson
import pytest
import requests
from serving_fixtures import ROWS, ServerProcess, model_config
from stream_fixtures import ModelStore, install_version

from serving._launch import child_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore):
    root = tmp_path_factory.mktemp("tfs_json")
    subprocess.run(
        [sys.executable, "-m", "serving._example_models", "tensors", str(root / "tensors")]
        + ["--version", "1"],
        check=True,
        env=child_env(),
        capture_output=True,
    )
    install_version(model_store.example, root / "fraud", 1)
    models = [
        {"name": "tensors", "base_path": root / "tensors"},
        {"name": "fraud", "base_path": root / "fraud"},
    ]
    (root / "models.config").write_text(model_config(models))
    proc = ServerProcess([f"--model_config_file={root / 'models.config'}"])
    with proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"


def _post(server: ServerProcess, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(server.url + path, data=data, timeout=30)


def _predict(server: ServerProcess, signature: str, body: dict[str, Any] | bytes) -> str:
    if isinstance(body, dict):
        body = orjson.dumps({"signature_name": signature, **body})
    r = _post(server, "/v1/models/tensors:predict", body)
    assert r.status_code == 200, r.text
    return r.text


def _error(server: ServerProcess, path: str, body: Any) -> str:
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def _compact(text: str) -> str:
    return "".join(text.split())


# --- values ---------------------------------------------------------------------------------------


def test_nan_and_infinity_are_read_and_written(server: ServerProcess) -> None:
    body = b'{"signature_name": "float32", "instances": [NaN, Infinity, -Infinity, 1.5]}'
    text = _predict(server, "", body)
    assert _compact(text) == '{"predictions":[NaN,Infinity,-Infinity,1.5]}'
    doc = json.loads(text)  # Python's json reads these tokens too
    assert doc["predictions"][3] == 1.5


@pytest.mark.parametrize(
    ("signature", "values", "written"),
    [
        ("float32", [9000000.0, 0.00003, 0.1, 3, 2.5, 123456789], "[9e+06,3e-05,0.1,3.0,2.5,123456792.0]"),
        ("float32", [1 / 3], "[0.333333343]"),  # six digits do not read back: full precision
        ("float64", [9000000.0, 0.1, 1 / 3, 1e300], "[9e+06,0.1,0.33333333333333331,1e+300]"),
    ],
)  # fmt: skip
def test_floats_are_written_with_tf_serving_precision(
    server: ServerProcess, signature: str, values: list[float], written: str
) -> None:
    assert (
        _compact(_predict(server, signature, {"inputs": values})) == '{"outputs":' + written + "}"
    )


def test_zero_sized_outputs(server: ServerProcess) -> None:
    assert _compact(_predict(server, "float32", {"inputs": []})) == '{"outputs":[]}'
    assert _compact(_predict(server, "float32", {"instances": [[]]})) == '{"predictions":[[]]}'


def test_several_named_outputs_in_both_formats(server: ServerProcess) -> None:
    rows = json.loads(_predict(server, "pair", {"instances": [1.0, 2.0]}))
    assert rows == {"predictions": [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 4.0}]}
    columns = json.loads(_predict(server, "pair", {"inputs": [[1.0], [2.0]]}))
    assert columns == {"outputs": {"a": [[1.0], [2.0]], "b": [[2.0], [4.0]]}}


@pytest.mark.parametrize(
    ("signature", "values"),
    [
        ("int32", [-(2**31), 2**31 - 1]),
        ("int64", [-(2**63), 2**63 - 1]),
        ("uint64", [0, 2**64 - 1]),
        ("bool", [True, False]),
        ("string", ["a", "é"]),
    ],
)
def test_identity_over_dtypes(server: ServerProcess, signature: str, values: list[Any]) -> None:
    assert json.loads(_predict(server, signature, {"instances": values})) == {"predictions": values}


def test_an_output_json_cannot_carry_is_a_400_naming_its_type(server: ServerProcess) -> None:
    error = _error(
        server, "/v1/models/tensors:predict", {"signature_name": "complex", "instances": [1.0]}
    )
    assert error == "Failed to write JSON value for tensor type: complex64"


# --- error texts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        ([[1.0, 2.0], [3.0]], "Failed to process element: 1 of 'instances' list. Error: "
         "Expecting tensor size: 2 but got: 1"),
        ([[[1.0, 2.0]], [[3.0], [4.0]]], "Failed to process element: 1 of 'instances' list. "
         "Error: Expecting shape [1,2] but got: [2,1]"),
        ([1.0, "a"], 'JSON Value: "a" Type: String is not of expected type: float'),
        ([[1.0, 2.0], [3.0, [4.0]]], "Encountered list at unexpected level: 1 expected < 1"),
    ],
)  # fmt: skip
def test_ragged_and_mixed_instances(
    server: ServerProcess, instances: list[Any], expected: str
) -> None:
    body = {"signature_name": "float32", "instances": instances}
    assert expected in _error(server, "/v1/models/tensors:predict", body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
        (b'{"instances": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element."),
        (b'{"instances": [1] "x": 2}', "JSON Parse error: Missing a comma or '}' after an object member."),
        (b"", "JSON Parse error: The document is empty"),
    ],
)  # fmt: skip
def test_malformed_json(server: ServerProcess, body: bytes, expected: str) -> None:
    assert expected in _error(server, "/v1/models/fraud:predict", body)


def test_uint64_feature_is_refused(server: ServerProcess) -> None:
    example = {**ROWS[0], "n_tx_24h": 2**64 - 1}
    error = _error(
        server, "/v1/models/fraud:classify", {"signature_name": "classify", "examples": [example]}
    )
    assert error == "Feature: n_tx_24h has uint64 element. Only int64_t is supported."


def test_unknown_signature_after_a_trailing_token(server: ServerProcess) -> None:
    # TF Serving's parser stops at the end of the first value: the signature decides.
    body = orjson.dumps({"signature_name": "nope", "examples": [ROWS[0]]}) + b" trailing"
    error = _error(server, "/v1/models/fraud:classify", body)
    assert error == "No signature was found with the name: nope"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": [{**ROWS[0], "amountt": 1.0}]},
         "Failed to process element: 0 key: amountt of 'instances' list. Error: JSON object: "
         "does not have named input: amountt"),
        ({"instances": [{"amount": 1.0, "n_tx_24h": 1}]},
         "keys must be equal to: amount,n_tx_24h,timestamp"),
        ({"inputs": {"amount": [1.0], "timestamp": ["2024-05-01T13:45:00Z"]}},
         "Missing named input: n_tx_24h in 'inputs' object."),
    ],
)  # fmt: skip
def test_input_names_mismatch(server: ServerProcess, body: dict[str, Any], expected: str) -> None:
    assert expected in _error(server, "/v1/models/fraud:predict", body)
