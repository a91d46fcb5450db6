"""One loaded SavedModel version: its signatures, metadata, warm-up and fast invocation.

This is the only module (with the example-model builders) that imports TensorFlow, and it does
so lazily, so importing :mod:`serving.model_server` stays cheap for the CLI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving._codec import Feature, InputBatch, InputSpecs, TensorInfo
from serving._errors import CODE_NAME, ServingError, invalid_argument

log = logging.getLogger("serving")

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"  # kDefaultServingSignatureDefKey
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
# Most string inputs of this platform's models are ISO-8601 timestamps parsed in the graph; an
# empty string would make such a warm-up fail for no reason.
_DUMMY_STRING = b"1970-01-01T00:00:00Z"


class LoadError(Exception):
    """A version could not be loaded; ``code`` is the canonical status shown in the status API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    dtype = tf.as_dtype(spec.dtype)
    dt_name = types_pb2.DataType.Name(dtype.as_datatype_enum).removeprefix("DT_").lower()
    if dtype == tf.string:
        kind, np_dtype = "string", np.dtype(object)
    elif dtype == tf.bool:
        kind, np_dtype = "bool", np.dtype(bool)
    elif dtype.is_floating:
        kind, np_dtype = "float", np.dtype(dtype.as_numpy_dtype)
    elif dtype.is_integer:
        kind, np_dtype = "int", np.dtype(dtype.as_numpy_dtype)
    else:
        kind, np_dtype = "unsupported", np.dtype(object)
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype_name=dt_name, kind=kind, np_dtype=np_dtype, shape=shape)


def _status_from_tf_error(exc: Exception) -> ServingError:
    import tensorflow as tf

    if isinstance(exc, tf.errors.OpError):
        code = CODE_NAME.get(int(exc.error_code), "UNKNOWN")
        return ServingError(code, exc.message)
    if isinstance(exc, TypeError | ValueError):
        return invalid_argument(str(exc))
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


@dataclass
class Signature:
    """A callable signature with its input/output specs, bound to its loaded function."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]  # sorted by name, as TF Serving's proto maps iterate
    outputs: dict[str, TensorInfo]
    function: Any
    tf_dtypes: dict[str, Any]
    flat_order: list[str] | None  # None: no fast path, call through the public API

    def run(self, batch: InputBatch | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        if not isinstance(batch, InputBatch):
            batch = InputBatch(dict(batch))
        for name, info in self.inputs.items():
            if info.kind == "unsupported":
                raise ServingError(
                    "UNIMPLEMENTED",
                    f"Conversion of JSON Value to type: {info.dtype_name} (input {name})",
                )
        try:
            tensors: dict[str, Any] = {}
            for names, stacked, axis in batch.stacks:
                # One conversion + one unstack op is far cheaper than one conversion per input.
                parts = tf.unstack(tf.constant(stacked, dtype=self.tf_dtypes[names[0]]), axis=axis)
                tensors.update(zip(names, parts, strict=True))
            for name, arr in batch.arrays.items():
                if name not in tensors:
                    tensors[name] = tf.constant(arr, dtype=self.tf_dtypes[name])
            if self.flat_order is not None:
                # ConcreteFunction.__call__ re-validates the structured signature on every call,
                # which costs more than running this model; the codec already checked names,
                # dtypes and shapes against the same specs.
                fn = self.function
                result = fn._call_flat([tensors[n] for n in self.flat_order], fn.captured_inputs)
            else:
                result = self.function(**tensors)
        except ServingError:
            raise
        except Exception as exc:  # TF raises many types; all become a canonical status
            raise _status_from_tf_error(exc) from exc
        if not isinstance(result, Mapping):
            raise ServingError("INTERNAL", f"signature {self.name} did not return a dict")
        return {k: v.numpy() for k, v in result.items()}


def _flat_order(
    function: Any, inputs: Mapping[str, TensorInfo], tf_dtypes: Any
) -> list[str] | None:
    """The positional order ``_call_flat`` expects, derived with TF's own argument binding.

    Returns None (so the public call path is used) if this TF version differs internally.
    """
    import tensorflow as tf

    try:
        from tensorflow.python.eager.polymorphic_function import function_type_utils

        markers = {}
        for name, info in inputs.items():
            shape = [1 if d is None else d for d in (info.shape or (1,))]
            markers[name] = tf.zeros(shape, dtype=tf_dtypes[name])
        bound = function_type_utils.canonicalize_function_inputs(
            (), markers, function.function_type
        )
        flat = function.function_type.unpack_inputs(bound)
        by_id = {id(t): name for name, t in markers.items()}
        order = [by_id[id(t)] for t in flat]
        if sorted(order) != sorted(inputs) or not hasattr(function, "_call_flat"):
            return None
        return order
    except Exception as exc:  # any internal API drift: fall back, never fail the load
        log.info("fast call path unavailable (%s); using the public signature call", exc)
        return None


class Servable:
    """A loaded version. Thread-safe for concurrent ``run`` calls."""

    def __init__(self, model_name: str, version: int, path: Path) -> None:
        self.model_name = model_name
        self.version = version
        self.path = path
        self._loaded: Any = None
        self.signatures: dict[str, Signature] = {}
        self.signature_def_map_json: dict[str, Any] = {}
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    def load(self) -> None:
        import tensorflow as tf

        started = time.perf_counter()
        meta = self._read_meta_graph()
        try:
            self._loaded = tf.saved_model.load(str(self.path), tags=[SERVE_TAG])
        except Exception as exc:
            status = _status_from_tf_error(exc)
            code = status.code if status.code != "INVALID_ARGUMENT" else "UNKNOWN"
            raise LoadError(code, f"Failed to load SavedModel at {self.path}: {exc}") from exc
        methods = {name: sig.method_name for name, sig in meta.signature_def.items()}
        for name, fn in self._loaded.signatures.items():
            inputs_spec = fn.structured_input_signature[1]
            inputs = InputSpecs({k: _tensor_info(k, inputs_spec[k]) for k in sorted(inputs_spec)})
            outputs_spec = fn.structured_outputs
            outputs = {k: _tensor_info(k, outputs_spec[k]) for k in sorted(outputs_spec)}
            tf_dtypes = {k: tf.as_dtype(inputs_spec[k].dtype) for k in inputs}
            self.signatures[name] = Signature(
                name=name,
                method_name=methods.get(name, ""),
                inputs=inputs,
                outputs=outputs,
                function=fn,
                tf_dtypes=tf_dtypes,
                flat_order=_flat_order(fn, inputs, tf_dtypes),
            )
        self.load_seconds = time.perf_counter() - started
        self.signature_def_map_json = self._signature_def_map_json(meta)

    def _read_meta_graph(self) -> Any:
        from google.protobuf import text_format
        from tensorflow.core.protobuf import saved_model_pb2

        saved_model = saved_model_pb2.SavedModel()
        pb, pbtxt = self.path / "saved_model.pb", self.path / "saved_model.pbtxt"
        try:
            if pb.exists():
                saved_model.ParseFromString(pb.read_bytes())
            else:
                text_format.Parse(pbtxt.read_text(), saved_model)
        except Exception as exc:  # DecodeError, ParseError, OSError
            raise LoadError(
                "DATA_LOSS", f"Could not parse SavedModel proto in {self.path}: {exc}"
            ) from exc
        for meta in saved_model.meta_graphs:
            if SERVE_TAG in meta.meta_info_def.tags:
                return meta
        raise LoadError(
            "NOT_FOUND",
            f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }} in the "
            f"SavedModel at {self.path}",
        )

    @staticmethod
    def _signature_def_map_json(meta: Any) -> dict[str, Any]:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in meta.signature_def.items():
            sig_map.signature_def[name].CopyFrom(sig)
        # The JsonPrintOptions of TF Serving's ToJsonString(GetModelMetadataResponse).
        return json_format.MessageToDict(
            sig_map, preserving_proto_field_name=True, including_default_value_fields=True
        )

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        try:
            return self.signatures[key]
        except KeyError:
            raise invalid_argument(
                f'Serving signature name: "{key}" not found in signature def'
            ) from None

    # --- classify / regress ----------------------------------------------------------------------

    def _example_signature(self, name: str, what: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise invalid_argument(f"No signature was found with the name: {key}")
        if len(sig.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if "inputs" not in sig.inputs:
            raise invalid_argument(f"No {what} inputs found in SignatureDef: {key}")
        if sig.inputs["inputs"].kind != "string":
            raise invalid_argument(
                f"Expected input Tensor 'inputs' of signature {key} to be DT_STRING "
                "(serialized tf.Example), got: " + sig.inputs["inputs"].dtype_name
            )
        return sig

    def classify(
        self, signature_name: str, examples: list[dict[str, Feature]]
    ) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        """Returns (classes [n, k] bytes or None, scores [n, k] float32 or None, run seconds)."""
        sig = self._example_signature(signature_name, "classification")
        n_out = len(sig.outputs)
        if n_out not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {n_out}")
        if "classes" not in sig.outputs and "scores" not in sig.outputs:
            raise invalid_argument(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {sig.name} with outputs {sorted(sig.outputs)}'
            )
        started = time.perf_counter()
        out = sig.run({"inputs": serialize_examples(examples)})
        seconds = time.perf_counter() - started
        n = len(examples)
        classes, scores = out.get("classes"), out.get("scores")
        for what, tensor, kind in (("classes", classes, "OSU"), ("scores", scores, "f")):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise invalid_argument(
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}"
                )
            if tensor.dtype.kind not in kind:
                want = "DT_STRING" if what == "classes" else "DT_FLOAT"
                raise invalid_argument(f"Expected {what} Tensor of {want}. Got: {tensor.dtype}")
            if tensor.shape[0] != n:
                raise invalid_argument(
                    f"Expected {what} output batch size of {n}. Got: {tensor.shape[0]}"
                )
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}"
            )
        return classes, None if scores is None else scores.astype(np.float32), seconds

    def regress(
        self, signature_name: str, examples: list[dict[str, Feature]]
    ) -> tuple[np.ndarray, float]:
        sig = self._example_signature(signature_name, "regression")
        if len(sig.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if "outputs" not in sig.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {sig.name}")
        started = time.perf_counter()
        values = sig.run({"inputs": serialize_examples(examples)})["outputs"]
        seconds = time.perf_counter() - started
        n = len(examples)
        if not (values.shape == (n,) or values.shape == (n, 1)):
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
                f"got {list(values.shape)}"
            )
        if values.dtype.kind != "f":
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT. Got: {values.dtype}")
        return values.astype(np.float32).reshape(-1), seconds

    # --- warm-up ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Replay assets.extra warm-up requests if shipped (failures fail the load, as in TF
        Serving); otherwise run one dummy batch through serving_default (failures only logged)."""
        started = time.perf_counter()
        warmup_file = self.path / WARMUP_FILE
        if warmup_file.exists():
            self._replay_warmup_file(warmup_file)
        elif DEFAULT_SIGNATURE in self.signatures:
            sig = self.signatures[DEFAULT_SIGNATURE]
            try:
                sig.run(self._dummy_batch(sig))
            except Exception as exc:
                log.warning(
                    "dummy warm-up of %s version %d failed (serving anyway): %s",
                    self.model_name,
                    self.version,
                    exc,
                )
        self.warmup_seconds = time.perf_counter() - started

    @staticmethod
    def _dummy_batch(sig: Signature) -> dict[str, np.ndarray]:
        batch = {}
        for name, info in sig.inputs.items():
            shape = tuple(1 if d is None else d for d in (info.shape or (1,)))
            if info.kind == "string":
                arr = np.empty(shape, dtype=object)
                arr.fill(_DUMMY_STRING)
            else:
                arr = np.zeros(shape, dtype=info.np_dtype)
            batch[name] = arr
        return batch

    def _replay_warmup_file(self, warmup_file: Path) -> None:
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        try:
            records = list(tf.data.TFRecordDataset(str(warmup_file)).take(MAX_WARMUP_RECORDS + 1))
        except Exception as exc:
            raise LoadError("DATA_LOSS", f"Cannot read warm-up file {warmup_file}: {exc}") from exc
        if len(records) > MAX_WARMUP_RECORDS:
            raise LoadError(
                "INVALID_ARGUMENT",
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at "
                f"{warmup_file}",
            )
        for index, record in enumerate(records):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                log.warning("skipping warm-up record %d: only predict_log is replayed", index)
                continue
            request = entry.predict_log.request
            try:
                sig = self.signature(request.model_spec.signature_name)
                arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                if arrays.keys() != sig.inputs.keys():
                    raise invalid_argument(
                        f"inputs {sorted(arrays)} do not match signature inputs "
                        f"{sorted(sig.inputs)}"
                    )
                sig.run(arrays)
            except Exception as exc:
                raise LoadError(
                    "INVALID_ARGUMENT", f"Warm-up record {index} in {warmup_file} failed: {exc}"
                ) from exc
        log.info(
            "replayed %d warm-up records for %s version %d",
            len(records),
            self.model_name,
            self.version,
        )

    def unload(self) -> None:
        self.signatures = {}
        self._loaded = None


def load_servable(model_name: str, version: int, path: Path) -> Servable:
    servable = Servable(model_name, version, path)
    servable.load()
    servable.warm_up()
    return servable


def serialize_examples(examples: list[dict[str, Feature]]) -> np.ndarray:
    """JSON-derived features -> serialized tf.Example protos (the classify/regress input)."""
    from tensorflow.core.example import example_pb2

    out = np.empty(len(examples), dtype=object)
    for i, features in enumerate(examples):
        example = example_pb2.Example()
        fmap = example.features.feature
        for name, (kind, values) in features.items():
            if kind == "bytes":
                fmap[name].bytes_list.value.extend(values)
            elif kind == "float":
                fmap[name].float_list.value.extend(values)
            else:
                fmap[name].int64_list.value.extend(values)
        out[i] = example.SerializeToString()
    return out
