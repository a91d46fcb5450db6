"""gRPC client for TF Serving compatible model servers (the embedded one or real TF Serving).

The same interface as the REST :class:`serving.client.ModelClient`, so the stream consumer
takes either (``--serving-protocol``)::

    client = GrpcModelClient("127.0.0.1:8500", "fraud")
    client.wait_until_available(timeout_s=60)
    result = client.predict(rows)          # rows: list of dicts, or dict of columns
    result.scores, result.model_version    # one score per row, and the version that answered

Each batch is one ``PredictionService/Predict`` call with one tensor per input. A TF Serving
predict answer names the version that produced it (``model_spec.version``), so unlike REST no
version is resolved beforehand, and a hot swap costs no failed call.

Tensors are typed: the input dtypes come from the served signature (``GetModelMetadata``), read
once and again whenever another version answers. Values are converted with the REST codec's
rules (``serving._json_tensor``), so a value the input cannot hold exactly is refused before
the call with the same words as the REST API's 400.

Errors: a non-OK status raises :class:`ServingRPCError`, whose ``status_code`` is the HTTP
status TF Serving's REST API gives the same canonical code; retries, backoff and the circuit
breaker are the REST client's, applied to the statuses that map to 5xx and 429.

This module imports neither TensorFlow nor ``tensorflow-serving-api`` (whose ``_pb2`` modules
import TensorFlow): it uses the light copies of the same messages in ``serving._tfs_protos``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format

from serving._errors import HTTP_STATUS, ServingError
from serving._json_tensor import TensorInfo, to_array
from serving._tfs_protos.tensorflow.core.framework import tensor_pb2, types_pb2
from serving._tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)
from serving.client_common import (
    RETRYABLE_STATUS,
    CircuitBreaker,
    NoAvailableVersionError,
    PredictResult,
    ServingClientError,
    ServingHTTPError,
    attempt_timeout,
    retryable,
    scores_of,
    to_columns,
    with_retries,
)

T = TypeVar("T")

DEFAULT_SIGNATURE = "serving_default"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
_SIGNATURE_DEF_MAP = "tensorflow.serving.SignatureDefMap"
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")

# DataType -> (TF's DataTypeString, the codec's kind, numpy dtype, TensorProto value field).
_DTYPES: dict[int, tuple[str, str, np.dtype, str]] = {
    types_pb2.DT_FLOAT: ("float", "float", np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: ("double", "float", np.dtype(np.float64), "double_val"),
    types_pb2.DT_HALF: ("half", "float", np.dtype(np.float16), "half_val"),
    types_pb2.DT_INT8: ("int8", "int", np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: ("int16", "int", np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: ("int32", "int", np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: ("int64", "int", np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: ("uint8", "int", np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: ("uint16", "int", np.dtype(np.uint16), "int_val"),
    types_pb2.DT_UINT32: ("uint32", "int", np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: ("uint64", "int", np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: ("bool", "bool", np.dtype(bool), "bool_val"),
    types_pb2.DT_STRING: ("string", "string", np.dtype(object), "string_val"),
}
_BY_NAME = {name: number for number, (name, *_) in _DTYPES.items()}


class ServingRPCError(ServingHTTPError):
    """The server answered with a non-OK gRPC status. ``code`` is its canonical name
    ("INVALID_ARGUMENT"); ``status_code`` the HTTP status TF Serving's REST API uses for it."""

    def __init__(self, code: str, message: str, target: str) -> None:
        super().__init__(HTTP_STATUS.get(code, 500), message, target)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code} from {self.url}: {self.message}"


# --- tensors -----------------------------------------------------------------------------------


def tensor_proto(values: Any, info: TensorInfo) -> Any:
    """One input's values as a TensorProto of the input's dtype (REST codec conversion rules)."""
    arr = to_array(values, info)
    proto = tensor_pb2.TensorProto(dtype=_BY_NAME[info.dtype_name])
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=size)
    if info.kind == "string":
        proto.string_val.extend(v if isinstance(v, bytes) else v.encode() for v in arr.ravel())
    else:
        proto.tensor_content = arr.astype(info.np_dtype.newbyteorder("<"), copy=False).tobytes()
    return proto


def to_numpy(proto: Any) -> np.ndarray:
    """A TensorProto as an array, from ``tensor_content`` or the typed value field (both are
    valid encodings: TF Serving answers with the typed fields)."""
    spec = _DTYPES.get(proto.dtype)
    if spec is None:
        raise ServingClientError(f"cannot decode an output tensor of DataType {proto.dtype}")
    _, kind, dtype, field = spec
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape)
    values = getattr(proto, field)
    if kind == "string":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif field == "half_val":  # float16 bit patterns, one per int32
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if len(flat) == size:
        return flat.reshape(shape)
    if 0 < len(flat) < size:  # TF's short form: the last value repeats
        return np.concatenate([flat, np.repeat(flat[-1:], size - len(flat))]).reshape(shape)
    if not len(flat):
        return np.zeros(shape, dtype=dtype)
    raise ServingClientError(f"tensor of shape {list(shape)} carries {len(flat)} values")


def signature_inputs(sig_map: Any, signature_name: str) -> dict[str, TensorInfo]:
    """The codec's view of a signature's inputs in a SignatureDefMap."""
    sig = sig_map.signature_def.get(signature_name or DEFAULT_SIGNATURE)
    if sig is None:
        raise ServingClientError(
            f"the model has no signature {signature_name or DEFAULT_SIGNATURE!r}; it has "
            f"{sorted(sig_map.signature_def)}"
        )
    inputs: dict[str, TensorInfo] = {}
    for name, info in sig.inputs.items():
        spec = _DTYPES.get(info.dtype)
        if spec is None:
            raise ServingClientError(
                f"input {name!r} has type {types_pb2.DataType.Name(info.dtype)}, which this "
                "client cannot encode"
            )
        dtype_name, kind, np_dtype, _ = spec
        inputs[name] = TensorInfo(name, dtype_name, kind, np_dtype, None)
    return inputs


# --- the client ----------------------------------------------------------------------------------


class GrpcModelClient:
    """Client of one model on one TF Serving compatible gRPC endpoint. Thread-safe."""

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | str | None = None,
        label: str | None = None,
        *,
        timeout_s: float = 2.0,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 10.0,
        signature_name: str | None = None,
        output_key: str | None = "fraud_probability",
    ) -> None:
        if version is not None and label is not None:
            raise ValueError(f"pin a version ({version}) or a label ({label!r}), not both")
        self.target = target
        self.base_url = f"grpc://{target}"  # where errors and logs say the server is
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.label = label
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.signature_name = signature_name or ""
        self.output_key = output_key
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        # The answers may be as large as the server makes them; requests are bounded by it.
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1)]
        )
        self._predict = self._method(PREDICT, predict_pb2.PredictResponse)
        self._metadata = self._method(
            GET_MODEL_METADATA, get_model_metadata_pb2.GetModelMetadataResponse
        )
        self._status = self._method(GET_MODEL_STATUS, get_model_status_pb2.GetModelStatusResponse)
        self._lock = threading.Lock()
        # (version the signature was read from, its inputs); None until read.
        self._inputs: tuple[int, dict[str, TensorInfo]] | None = None

    def _method(self, path: str, response: Any) -> Any:
        return self._channel.unary_unary(
            path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _spec(self, spec: Any, signature: bool = False) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature and self.signature_name:
            spec.signature_name = self.signature_name

    def _rpc(self, method: Any, request: Any, what: str, deadline: float | None = None) -> Any:
        """One call through the breaker, within ``deadline`` if given; retryable failures raise
        for ``with_retries``."""
        timeout_s = attempt_timeout(self.timeout_s, deadline, f"{what} on {self.target}")
        self.breaker.before_call(self.base_url)
        try:
            response = method(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = _code_name(exc)
            message = exc.details() or code  # type: ignore[attr-defined]
            if HTTP_STATUS.get(code, 500) in RETRYABLE_STATUS:
                self.breaker.record_failure()
                raise retryable(f"{what} on {self.target}: {code}: {message}") from exc
            self.breaker.record_success()  # an answer, even an error, proves the server is up
            raise ServingRPCError(code, message, self.base_url) from exc
        except Exception:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return response

    def _with_retries(
        self, what: str, attempt_fn: Callable[[int], T], deadline: float | None = None
    ) -> T:
        return with_retries(
            what, attempt_fn, self.max_retries, self.backoff_s, self.backoff_max_s, deadline
        )

    # --- signature -----------------------------------------------------------------------------

    def _read_metadata(self, deadline: float | None = None) -> Any:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._rpc(self._metadata, request, "GetModelMetadata", deadline)

    def _signature_def_map(self, response: Any) -> Any:
        packed = response.metadata.get("signature_def")
        if packed is None or packed.type_url.rpartition("/")[2] != _SIGNATURE_DEF_MAP:
            raise ServingClientError(
                f"{self.base_url}: metadata of {self.model_name} has no SignatureDefMap"
            )
        sig_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
        inputs = signature_inputs(sig_map, self.signature_name)
        with self._lock:
            self._inputs = (response.model_spec.version.value, inputs)
        return sig_map

    def _current_inputs(self, deadline: float | None) -> dict[str, TensorInfo]:
        with self._lock:
            cached = self._inputs
        if cached is None:
            self._signature_def_map(self._read_metadata(deadline))
            with self._lock:
                cached = self._inputs
        assert cached is not None
        return cached[1]

    # --- public API ----------------------------------------------------------------------------

    def predict(
        self,
        rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        *,
        deadline: float | None = None,
    ) -> PredictResult:
        """Score one batch: rows as a list of dicts, or columns as a dict of lists/arrays.

        ``deadline`` (a ``time.monotonic()`` instant) bounds the whole call, retries included:
        each RPC's timeout is cut to the time left, and no retry starts after it.
        """
        columns, n_rows = to_columns(rows)

        def attempt(n: int) -> PredictResult:
            inputs = self._current_inputs(deadline)
            request = predict_pb2.PredictRequest()
            self._spec(request.model_spec, signature=True)
            for name, values in columns.items():
                info = inputs.get(name)
                if info is None:
                    raise ServingRPCError(
                        "INVALID_ARGUMENT",
                        f"input {name!r} is not an input of the signature; it has {sorted(inputs)}",
                        self.base_url,
                    )
                try:
                    request.inputs[name].CopyFrom(tensor_proto(values, info))
                except ServingError as exc:
                    raise ServingRPCError(
                        exc.code,
                        f"Failed to process input: {name}. Error: {exc.message}",
                        self.base_url,
                    ) from exc
            started = time.perf_counter()
            response = self._rpc(self._predict, request, "Predict", deadline)
            latency = time.perf_counter() - started
            version = response.model_spec.version.value
            with self._lock:
                if self._inputs is not None and self._inputs[0] != version:
                    self._inputs = None  # another version answered: read its signature next
            outputs = {alias: to_numpy(t) for alias, t in response.outputs.items()}
            scores = scores_of(outputs, self.output_key, n_rows, self.base_url)
            return PredictResult(scores, str(version), latency, n, outputs)

        return self._with_retries(f"predict on {self.model_name}", attempt, deadline)

    def metadata(self, *, deadline: float | None = None) -> dict[str, Any]:
        """GetModelMetadata, as the REST API's JSON answer: ``model_spec`` and the
        SignatureDefMap under ``metadata.signature_def`` (with retries)."""

        def attempt(_: int) -> dict[str, Any]:
            response = self._read_metadata(deadline)
            sig_map = self._signature_def_map(response)
            return {
                "model_spec": _json(response.model_spec),
                "metadata": {"signature_def": _json(sig_map)},
            }

        return self._with_retries("metadata", attempt, deadline)

    def status(self, *, deadline: float | None = None) -> dict[str, Any]:
        """GetModelStatus, as the REST API's JSON answer (with retries)."""
        return self._with_retries(
            "status", lambda _: _json(self._read_status(deadline), names=False), deadline
        )

    def _read_status(self, deadline: float | None = None) -> Any:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return self._rpc(self._status, request, "GetModelStatus", deadline)

    def current_version(self, *, deadline: float | None = None) -> str:
        """The highest AVAILABLE version of the model (or of the pinned version / label)."""

        def attempt(_: int) -> str:
            version = _available(self._read_status(deadline))
            if version is None:
                raise NoAvailableVersionError(
                    f"no AVAILABLE version of model {self.model_name} at {self.base_url}"
                )
            return str(version)

        return self._with_retries("resolve version", attempt, deadline)

    def wait_until_available(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> str:
        """Block until the model (or pinned version/label) has an AVAILABLE version; return it.

        An unreachable server and NOT_FOUND are expected while a server starts, so they are
        waited out; the circuit breaker is not involved.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        while True:
            try:
                version = _available(self._status(request, timeout=self.timeout_s))
                if version is not None:
                    return str(version)
                last = "no AVAILABLE version"
            except grpc.RpcError as exc:
                last = f"{_code_name(exc)}: {exc.details()}"  # type: ignore[attr-defined]
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"model {self.model_name} not available at {self.base_url} after "
                    f"{timeout_s}s: {last}"
                )
            time.sleep(poll_s)


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code()  # type: ignore[attr-defined]
    return code.name if code is not None else "UNKNOWN"


def _available(response: Any) -> int | None:
    versions = [s.version for s in response.model_version_status if s.state == _AVAILABLE]
    return max(versions) if versions else None


def _json(message: Any, names: bool = True) -> dict[str, Any]:
    """A message as TF Serving's REST API prints it (its JsonPrintOptions)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=names, including_default_value_fields=True
    )
