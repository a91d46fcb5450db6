"""TF Serving's gRPC API (``--port``): ``tensorflow.serving.PredictionService`` (Predict, Classify,
Regress, GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus).

The same manager, servables and errors as the REST API; what differs is only the encoding
(``TensorProto`` instead of JSON) and that a :class:`~serving._errors.ServingError` becomes the
gRPC status of the same canonical code, as TF Serving returns its ``Status``. The semantics
follow tensorflow_serving/servables/tensorflow/predict_util.cc (signature lookup, the input and
output-filter checks and their texts), classifier.cc / regressor.cc (through the servable) and
get_model_metadata_impl.cc.

The service runs on ``grpc.aio`` in the event loop that already serves REST, and hands every
model call to the same thread pool: one pool bounds the model work of both protocols
(``--rest_api_num_threads``), and neither protocol's sockets wait behind the other's requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import grpc
import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving._errors import CODE_NUMBER, ServingError, invalid_argument
from serving._manager import ModelManager, VersionState
from serving._servable import DEFAULT_SIGNATURE, Servable, types_name

log = logging.getLogger("serving")

SIGNATURE_DEF_FIELD = "signature_def"  # GetModelMetadata's only metadata_field
# TensorProto's typed value field of each numpy dtype: TF Serving answers with
# Tensor::AsProtoField, and clients often read e.g. ``outputs["y"].float_val`` directly.
_VALUE_FIELD = {
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "float16": "half_val",  # the bit patterns
    "complex64": "scomplex_val",  # real and imaginary parts, interleaved
    "complex128": "dcomplex_val",
}


class RequestRecorder(Protocol):
    def __call__(
        self,
        model: str,
        api: str,
        version: str,
        code: str,
        seconds: float,
        rows: int | None,
        runtime_s: float | None,
        entrypoint: str,
    ) -> None: ...


class _Call:
    """What one RPC produced, for the metrics."""

    def __init__(self) -> None:
        self.version = ""
        self.rows: int | None = None
        self.runtime_s: float | None = None


# --- tensors ---------------------------------------------------------------------------------


def to_array(alias: str, proto: Any, want_dtype: str) -> np.ndarray:
    """A request's TensorProto as the array fed to input ``alias`` (of TF dtype ``want_dtype``).

    TF Serving hands the tensor to the session, which refuses a dtype other than the input's;
    numpy conversion would cast it silently, so the dtype is checked here.
    """
    import tensorflow as tf

    got = types_name(proto.dtype)
    if got != want_dtype:
        raise invalid_argument(
            f"Input {alias}: expects a {want_dtype} tensor but {got} is provided"
        )
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"tensor parsing error: {alias} ({exc})") from exc


def to_proto(arr: np.ndarray) -> Any:
    """An output array as a TensorProto with typed value fields (Tensor::AsProtoField)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    field = _VALUE_FIELD.get(arr.dtype.name)
    if field is None and arr.dtype.kind not in "OSU":
        return tf.make_tensor_proto(arr)  # no typed field for it: TF's own encoding
    dtype = tf.string if field is None else tf.as_dtype(arr.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = np.ascontiguousarray(arr).ravel()
    if field is None:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return proto
    if arr.dtype.kind == "c":
        flat = flat.view(flat.real.dtype)
    elif field == "half_val":
        flat = flat.view(np.uint16)
    getattr(proto, field).extend(flat.tolist())
    return proto


# --- requests --------------------------------------------------------------------------------


def _resolve_spec(request: Any) -> tuple[str, int | None, str | None]:
    """(model name, version, label) of a request's ModelSpec (ServerCore's reading of it)."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.name, spec.version.value, None
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, None, None


def _fill_spec(target: Any, name: str, version: int, signature_name: str | None) -> None:
    """MakeModelSpec: the answer names the model, version and signature that produced it."""
    target.name = name
    target.version.value = version
    if signature_name is not None:
        target.signature_name = signature_name


def _predict_inputs(request: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    sent, required = set(request.inputs), set(inputs)
    if len(sent) != len(required):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(required)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(required))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - required))}}}. "
            f"Missing but required: {{{','.join(sorted(required - sent))}}}."
        )
    unknown = sorted(sent - required)
    if unknown:
        raise invalid_argument(
            f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in "
            f"the set {{{','.join(sorted(required))}}}."
        )
    return {
        alias: to_array(alias, request.inputs[alias], info.dtype_name)
        for alias, info in inputs.items()
    }


def _output_aliases(request: Any, outputs: dict[str, Any]) -> list[str]:
    aliases: list[str] = []
    for alias in request.output_filter:
        if alias not in outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(outputs))}}}."
            )
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or list(outputs)


def predict(servable: Servable, name: str, version: int, request: Any, call: _Call) -> Any:
    """RunPredict: signature lookup, input / output-filter checks, run, AsProtoField answer."""
    sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    sig = servable.signatures.get(sig_name)
    if sig is None:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{sig_name}" not found.')
    arrays = _predict_inputs(request, sig.inputs)
    aliases = _output_aliases(request, sig.outputs)
    started = time.perf_counter()
    outputs = sig.run(arrays)
    call.runtime_s = time.perf_counter() - started
    first = next(iter(arrays.values()), None)
    call.rows = int(first.shape[0]) if first is not None and first.ndim else None
    response = predict_pb2.PredictResponse()
    _fill_spec(response.model_spec, name, version, sig_name)
    for alias in aliases:
        response.outputs[alias].CopyFrom(to_proto(outputs[alias]))
    return response


def serialized_examples(input_proto: Any) -> np.ndarray:
    """An ``Input``'s examples as serialized tf.Example protos (InputToSerializedExampleTensor).

    With a context, each example is the context's bytes followed by its own: parsing the
    concatenation merges them, the example's features winning over the context's.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    out = np.empty(len(examples), dtype=object)
    out[:] = examples
    return out


def classify(servable: Servable, name: str, version: int, request: Any, call: _Call) -> Any:
    sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    serialized = serialized_examples(request.input)
    classes, scores, call.runtime_s = servable.classify_serialized(sig_name, serialized)
    call.rows = len(serialized)
    response = classification_pb2.ClassificationResponse()
    _fill_spec(response.model_spec, name, version, sig_name)
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    for row in range(len(serialized)):
        classification = response.result.classifications.add()
        for k in range(width):
            entry = classification.classes.add()
            if classes is not None:
                label = classes[row, k]
                entry.label = (
                    label.decode("utf-8", "replace") if isinstance(label, bytes) else label
                )
            if scores is not None:
                entry.score = float(scores[row, k])
    return response


def regress(servable: Servable, name: str, version: int, request: Any, call: _Call) -> Any:
    sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    serialized = serialized_examples(request.input)
    values, call.runtime_s = servable.regress_serialized(sig_name, serialized)
    call.rows = len(serialized)
    response = regression_pb2.RegressionResponse()
    _fill_spec(response.model_spec, name, version, sig_name)
    for value in values.tolist():
        response.result.regressions.add(value=value)
    return response


def metadata(servable: Servable, name: str, version: int, request: Any, call: _Call) -> Any:
    """GetModelMetadataImpl: only ``signature_def`` exists, and it must be asked for."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _fill_spec(response.model_spec, name, version, None)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
    return response


def status_response(versions: list[VersionState]) -> Any:
    """A GetModelStatusResponse of the manager's versions (newest first)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for vs in versions:
        entry = response.model_version_status.add()
        entry.version = vs.version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(vs.state)
        entry.status.error_code = CODE_NUMBER[vs.error_code]
        entry.status.error_message = vs.error_message
    return response


# --- the services ----------------------------------------------------------------------------

Handler = Callable[[Servable, str, int, Any, _Call], Any]


class _Dispatch:
    """Runs a handler on a pinned version in the thread pool; errors become gRPC statuses."""

    def __init__(self, manager: ModelManager, executor: Executor, record: RequestRecorder):
        self.manager = manager
        self.executor = executor
        self.record = record

    def _on_version(self, handler: Handler, request: Any, call: _Call) -> Any:
        name, version, label = _resolve_spec(request)
        with self.manager.acquire(name, version, label) as vs:
            call.version = str(vs.version)
            return handler(vs.servable, name, vs.version, request, call)

    async def run(
        self, api: str, request: Any, context: grpc.aio.ServicerContext, work: Callable[..., Any]
    ) -> Any:
        started = time.perf_counter()
        call = _Call()
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.executor, work, request, call)
        except asyncio.CancelledError:
            # The client cancelled or its deadline passed: the worker finishes on its own.
            self._record(request, api, call, "CANCELLED", started)
            raise
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("internal error in gRPC %s", api)
            code, message = "INTERNAL", f"Internal error: {type(exc).__name__}: {exc}"
        else:
            self._record(request, api, call, "OK", started)
            return response
        self._record(request, api, call, code, started)
        await context.abort(grpc.StatusCode[code], message)

    def _record(self, request: Any, api: str, call: _Call, code: str, started: float) -> None:
        model = request.model_spec.name if request.HasField("model_spec") else ""
        seconds = time.perf_counter() - started
        self.record(model, api, call.version, code, seconds, call.rows, call.runtime_s, "GRPC")

    def model_call(self, handler: Handler) -> Callable[[Any, _Call], Any]:
        return lambda request, call: self._on_version(handler, request, call)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata; MultiInference stays UNIMPLEMENTED."""

    def __init__(self, dispatch: _Dispatch) -> None:
        self._dispatch = dispatch

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        work = self._dispatch.model_call(predict)
        return await self._dispatch.run("predict", request, context, work)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        work = self._dispatch.model_call(classify)
        return await self._dispatch.run("classify", request, context, work)

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        work = self._dispatch.model_call(regress)
        return await self._dispatch.run("regress", request, context, work)

    async def GetModelMetadata(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        work = self._dispatch.model_call(metadata)
        return await self._dispatch.run("metadata", request, context, work)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (use --model_config_file)."""

    def __init__(self, dispatch: _Dispatch) -> None:
        self._dispatch = dispatch

    def _status(self, request: Any, call: _Call) -> Any:
        name, version, label = _resolve_spec(request)
        return status_response(self._dispatch.manager.status(name, version, label))

    async def GetModelStatus(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._dispatch.run("status", request, context, self._status)


async def start_grpc_server(
    host: str,
    port: int,
    max_message_bytes: int,
    manager: ModelManager,
    executor: Executor,
    record: RequestRecorder,
) -> tuple[grpc.aio.Server, int]:
    """Serve both services on ``host:port`` in the running event loop; returns (server, port)."""
    server = grpc.aio.server(
        options=[
            # The REST body cap bounds what one request can make the server allocate here too.
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # Without this a second server on the same port would silently share it.
            ("grpc.so_reuseport", 0),
        ]
    )
    dispatch = _Dispatch(manager, executor, record)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(dispatch), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dispatch), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc's way of saying the address cannot be bound
        raise OSError(f"cannot bind the gRPC port {host}:{port}: {exc}") from exc
    await server.start()
    return server, bound
