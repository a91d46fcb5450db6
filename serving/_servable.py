"""One loaded SavedModel version: its signatures, metadata, warm-up and fast invocation.

This is the only module (with the example-model builders) that imports TensorFlow, and it does
so lazily, so importing :mod:`serving.model_server` stays cheap for the CLI.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving._codec import InputBatch, InputSpecs, batch_of_arrays
from serving._errors import CODE_NAME, ServingError, invalid_argument
from serving._json_examples import Feature
from serving._json_tensor import TensorInfo

log = logging.getLogger("serving")

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"  # kDefaultServingSignatureDefKey
INIT_OP_SIGNATURE = "__saved_model_init_op"  # where TF2 SavedModels keep their init op
# Where TF1 SavedModels keep it (saved_model constants MAIN_OP_KEY, LEGACY_INIT_OP_KEY).
_INIT_OP_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
_ASSETS_COLLECTION = "saved_model_assets"
_GRAPH_ERROR_HEADER = "Graph execution error:"
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


def _tensor_info(name: str, proto: Any) -> TensorInfo:
    """A SignatureDef ``TensorInfo`` proto -> the codec's view of it."""
    import tensorflow as tf

    if proto.WhichOneof("encoding") != "name":
        # Sparse and composite inputs have no single tensor to feed or fetch.
        return TensorInfo(name, "unsupported", "unsupported", np.dtype(object), None)
    dtype = tf.as_dtype(proto.dtype)
    dt_name = types_name(proto.dtype)
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
    dims = proto.tensor_shape
    shape = None if dims.unknown_rank else tuple(None if d.size < 0 else d.size for d in dims.dim)
    return TensorInfo(name=name, dtype_name=dt_name, kind=kind, np_dtype=np_dtype, shape=shape)


def types_name(dtype_enum: int) -> str:
    """TF's DataTypeString of a ``DataType`` enum value: "float", "int64", "complex64"..."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype_enum).removeprefix("DT_").lower()


def _status_from_tf_error(exc: Exception) -> ServingError:
    import tensorflow as tf

    if isinstance(exc, tf.errors.OpError):
        code = CODE_NAME.get(int(exc.error_code), "UNKNOWN")
        # Session.run heads the runtime's message with this line; TF Serving sends it bare.
        return ServingError(code, exc.message.removeprefix(_GRAPH_ERROR_HEADER).lstrip("\n"))
    if isinstance(exc, TypeError | ValueError):
        return invalid_argument(str(exc))
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


@dataclass
class Signature:
    """A signature's input/output specs, bound to the graph tensors it feeds and fetches."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]  # sorted by name, as TF Serving's proto maps iterate
    outputs: dict[str, TensorInfo]
    session: Any  # tf.compat.v1.Session holding the version's graph and variables
    feeds: dict[str, Any]  # input name -> the shape-free tensor standing in for it
    fetches: list[str]  # graph tensor names of ``outputs``, in the same order
    # A stacking group's input names -> the placeholder of their stack (see _open_session).
    stacked_feeds: dict[tuple[str, ...], Any]

    def run(self, batch: InputBatch | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(batch, InputBatch):
            batch = batch_of_arrays(batch, self.inputs)
        for name, info in self.inputs.items():
            if info.kind == "unsupported":
                raise ServingError(
                    "UNIMPLEMENTED",
                    f"Conversion of JSON Value to type: {info.dtype_name} (input {name})",
                )
        feed_dict: dict[Any, np.ndarray] = {}
        stacked: set[str] = set()
        for names, array in batch.stacks:
            key = self.stacked_feeds.get(names)
            if key is not None:
                # Session.run's per-feed cost is higher than the model's at small batches.
                feed_dict[key] = array
                stacked.update(names)
        for name, arr in batch.arrays.items():
            if name not in stacked:
                feed_dict[self.feeds[name]] = arr
        try:
            values = self.session.run(self.fetches, feed_dict)
        except Exception as exc:  # TF raises many types; all become a canonical status
            raise _status_from_tf_error(exc) from exc
        return dict(zip(self.outputs, values, strict=True))


def _asset_file_defs(meta: Any) -> list[Any]:
    """The asset files whose paths the init op is fed: TF2 SavedModels list them in the meta
    graph, TF1 ones in a collection (saved_model constants ASSETS_KEY)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    defs = list(meta.asset_file_def)
    if _ASSETS_COLLECTION in meta.collection_def:
        for packed in meta.collection_def[_ASSETS_COLLECTION].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            packed.Unpack(asset)
            defs.append(asset)
    return defs


def _init_op_name(meta: Any) -> str:
    """The op that initialises tables and the like after the variables are restored, if any."""
    init = meta.signature_def.get(INIT_OP_SIGNATURE)
    if init is not None and INIT_OP_SIGNATURE in init.outputs:
        return init.outputs[INIT_OP_SIGNATURE].name
    for key in _INIT_OP_COLLECTIONS:
        nodes = meta.collection_def[key].node_list.value if key in meta.collection_def else []
        if nodes:
            return nodes[0]
    return ""


class Servable:
    """A loaded version. Thread-safe for concurrent ``run`` calls."""

    def __init__(self, model_name: str, version: int, path: Path) -> None:
        self.model_name = model_name
        self.version = version
        self.path = path
        self._session: Any = None
        self.signatures: dict[str, Signature] = {}
        self.signature_def_map: Any = None  # tensorflow.serving.SignatureDefMap, for gRPC
        self.signature_def_map_json: dict[str, Any] = {}
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    def load(self) -> None:
        from core.model import register_custom_ops  # lazily: core.model imports pandas

        started = time.perf_counter()
        meta = self._read_meta_graph()
        try:
            register_custom_ops(op.name for op in meta.meta_info_def.stripped_op_list.op)
            self._open_session(meta)
        except Exception as exc:
            status = _status_from_tf_error(exc)
            code = status.code if status.code != "INVALID_ARGUMENT" else "UNKNOWN"
            raise LoadError(code, f"Failed to load SavedModel at {self.path}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.signature_def_map = self._signature_def_map(meta)
        self.signature_def_map_json = self._signature_def_map_json(self.signature_def_map)

    def _open_session(self, meta: Any) -> None:
        """Import the graph, restore its variables and run its init op, as TF Serving does.

        Every signature input is remapped to a tensor of unknown shape: TF Serving feeds
        whatever shape the request has and lets the graph's own ops judge it, whereas a
        placeholder of the declared shape makes ``Session.run`` refuse the feed beforehand.
        The inputs of a stacking group (same dtype and declared shape, used by one signature
        only) become the slices of one stacked placeholder, fed with one array; each slice can
        still be fed on its own when a request's inputs do not stack.
        """
        import tensorflow as tf

        specs = {
            name: InputSpecs({k: _tensor_info(k, sig.inputs[k]) for k in sorted(sig.inputs)})
            for name, sig in meta.signature_def.items()
            if name != INIT_OP_SIGNATURE
        }
        uses = Counter(i.name for sig in meta.signature_def.values() for i in sig.inputs.values())
        graph = tf.Graph()
        input_map: dict[str, Any] = {}
        stacked_feeds: dict[str, dict[tuple[str, ...], Any]] = {name: {} for name in specs}
        with graph.as_default():
            for sig_name, inputs in specs.items():
                tensor_names = {k: v.name for k, v in meta.signature_def[sig_name].inputs.items()}
                for group in inputs.stack_groups:
                    if any(uses[tensor_names[k]] > 1 for k in group):
                        continue
                    stack = tf.compat.v1.placeholder(tf.as_dtype(inputs[group[0]].np_dtype))
                    parts = tf.unstack(stack, num=len(group), axis=0)
                    input_map.update(zip((tensor_names[k] for k in group), parts, strict=True))
                    stacked_feeds[sig_name][tuple(group)] = stack
            for sig in meta.signature_def.values():
                for info in sig.inputs.values():
                    if info.name and info.name not in input_map:
                        input_map[info.name] = tf.compat.v1.placeholder(tf.as_dtype(info.dtype))
            tf.graph_util.import_graph_def(meta.graph_def, input_map=input_map, name="")
        self._session = session = tf.compat.v1.Session(graph=graph)
        saver = meta.saver_def
        variables = self.path / "variables" / "variables"
        if saver.restore_op_name and variables.with_suffix(".index").exists():
            session.run(saver.restore_op_name, {saver.filename_tensor_name: str(variables)})
        init_op = _init_op_name(meta)
        if init_op:
            assets = {
                a.tensor_info.name: str(self.path / "assets" / a.filename)
                for a in _asset_file_defs(meta)
            }
            session.run(init_op, assets)
        for name, inputs in specs.items():
            sig = meta.signature_def[name]
            outputs = {k: _tensor_info(k, sig.outputs[k]) for k in sorted(sig.outputs)}
            self.signatures[name] = Signature(
                name=name,
                method_name=sig.method_name,
                inputs=inputs,
                outputs=outputs,
                session=session,
                feeds={k: input_map[v.name] for k, v in sig.inputs.items() if v.name},
                fetches=[sig.outputs[k].name for k in outputs],
                stacked_feeds=stacked_feeds[name],
            )

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
    def _signature_def_map(meta: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in meta.signature_def.items():
            sig_map.signature_def[name].CopyFrom(sig)
        return sig_map

    @staticmethod
    def _signature_def_map_json(sig_map: Any) -> dict[str, Any]:
        from google.protobuf import json_format

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
        return self.classify_serialized(signature_name, serialize_examples(examples))

    def classify_serialized(
        self, signature_name: str, serialized: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        """``classify`` of serialized tf.Example protos (a 1-d object array of bytes)."""
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
        out = sig.run({"inputs": serialized})
        seconds = time.perf_counter() - started
        n = len(serialized)
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
        return self.regress_serialized(signature_name, serialize_examples(examples))

    def regress_serialized(
        self, signature_name: str, serialized: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Returns (one float32 value per example, run seconds)."""
        sig = self._example_signature(signature_name, "regression")
        if len(sig.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if "outputs" not in sig.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {sig.name}")
        started = time.perf_counter()
        values = sig.run({"inputs": serialized})["outputs"]
        seconds = time.perf_counter() - started
        n = len(serialized)
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
        if self._session is not None:
            self._session.close()
            self._session = None


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
