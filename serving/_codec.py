"""TF Serving's REST predict encoding: request bodies to input arrays, outputs back to JSON.

The row vs columnar formats, ``_bytes`` output names and the error texts follow
tensorflow_serving/util/json_tensor.cc; one value becomes one array in ``serving._json_tensor``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving._errors import ServingError, invalid_argument
from serving._json_dense import DenseNumbers, dense_document
from serving._json_numbers import float_json, float_json_parts, float_rows_json
from serving._json_parse import lenient_loads
from serving._json_tensor import (
    TensorInfo,
    check_range,
    is_b64,
    kind_fits,
    preview,
    to_array,
)

ROW, COLUMNAR = "row", "columnar"
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY


def parse_json_object(body: bytes | bytearray, dense: bool = False) -> dict[str, Any]:
    """The request's JSON object; with ``dense``, a large flat float tensor stays text until
    ``parse_predict_request`` knows its dtype (``serving._json_dense``)."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    if dense and (doc := dense_document(body)) is not None:
        return doc
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # The strict fast parser refused it: NaN, a trailing token, or a real error.
        doc = lenient_loads(body)
    if type(doc) is not dict:
        raise invalid_argument(f"JSON Value: {preview(doc)} Is not object")
    return doc


def signature_name_of(doc: Mapping[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if type(name) is not str:
        raise invalid_argument(
            f"JSON Value: {preview(dict(doc))} not formatted correctly. 'signature_name' key "
            "must be a string value."
        )
    return name


def _names_mismatch(sent: set[str], required: set[str]) -> str:
    return (
        f"Sent extra: {{{','.join(sorted(sent - required))}}}. "
        f"Missing but required: {{{','.join(sorted(required - sent))}}}."
    )


def _row_error(index: int, name: str | None, exc: ServingError) -> ServingError:
    key = f" key: {name}" if name is not None else ""
    return invalid_argument(
        f"Failed to process element: {index}{key} of 'instances' list. Error: {exc.message}"
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _convert_column(name: str | None, info: TensorInfo, column: list[Any]) -> np.ndarray:
    try:
        return to_array(column, info)
    except ServingError as exc:
        # Re-run row by row only to point at the offending element, in TF Serving's words.
        first: np.ndarray | None = None
        for index, value in enumerate(column):
            try:
                arr = to_array(value, info)
            except ServingError as row_exc:
                raise _row_error(index, name, row_exc) from exc
            if first is None:
                first = arr
            elif arr.size != first.size:
                problem = f"Expecting tensor size: {first.size} but got: {arr.size}"
                raise _row_error(index, name, invalid_argument(problem)) from exc
            elif arr.shape != first.shape:
                problem = (
                    f"Expecting shape {_shape_text(first.shape)} but got: {_shape_text(arr.shape)}"
                )
                raise _row_error(index, name, invalid_argument(problem)) from exc
        raise invalid_argument(
            f"Failed to process key: {name} of 'instances' list. Error: {exc.message}"
        ) from exc


@dataclass
class InputBatch:
    """Converted inputs, by signature input name. ``stacks`` hold the inputs of a stacking
    group converted together, stacked on axis 0 (one array fed instead of one per input);
    ``arrays`` has every input, stacked ones as views of their stack."""

    arrays: dict[str, np.ndarray]
    stacks: list[tuple[tuple[str, ...], np.ndarray]] = field(default_factory=list)

    @property
    def rows(self) -> int | None:
        for arr in self.arrays.values():
            return int(arr.shape[0]) if arr.ndim else None
        return None


class InputSpecs(dict[str, TensorInfo]):
    """A signature's inputs, with the stacking groups computed once (per loaded version)."""

    def __init__(self, items: Mapping[str, TensorInfo]) -> None:
        super().__init__(items)
        self.stack_groups = _stack_groups(self)


def _stack_groups(inputs: Mapping[str, TensorInfo]) -> list[list[str]]:
    cached = getattr(inputs, "stack_groups", None)
    if cached is not None:
        return cached
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, info in inputs.items():
        if info.kind in ("float", "int", "bool") and info.shape is not None and info.shape:
            groups.setdefault((info.kind, info.np_dtype, info.shape), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def batch_of_arrays(
    arrays: Mapping[str, np.ndarray], inputs: Mapping[str, TensorInfo]
) -> InputBatch:
    """Arrays converted elsewhere (gRPC tensors, warm-up batches), with each stacking group's
    arrays stacked as the JSON paths stack them, when they have one shape and the input's dtype.
    """
    batch = InputBatch(dict(arrays))
    for names in _stack_groups(inputs):
        parts = [arrays.get(n) for n in names]
        if any(
            p is None or p.dtype != inputs[n].np_dtype for n, p in zip(names, parts, strict=True)
        ):
            continue
        if len({p.shape for p in parts}) != 1:  # type: ignore[union-attr]
            continue
        stacked = np.stack(parts)  # type: ignore[arg-type]
        batch.stacks.append((tuple(names), stacked))
        for i, n in enumerate(names):
            batch.arrays[n] = stacked[i]
    return batch


def _try_stack(values: list[Any], info: TensorInfo, axis: int) -> np.ndarray | None:
    """Convert several same-spec inputs at once; None means "do it one by one" (which also
    produces the precise error message if something is wrong)."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        return None
    kind = arr.dtype.kind
    if not kind_fits(kind, info) or arr.ndim != len(info.shape or ()) + 1:
        return None
    if arr.size and kind != "b":
        try:
            check_range(arr, info)
        except ServingError:
            return None
    return arr.astype(info.np_dtype, copy=False)


def inputs_from_instances(
    instances: Any, inputs: Mapping[str, TensorInfo], model_name: str
) -> InputBatch:
    """Row format: ``"instances": [{name: value, ...}, ...]`` or a plain list for one input."""
    if type(instances) is not list:
        raise invalid_argument("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    first = instances[0]
    objects = type(first) is dict and not is_b64(first)
    if not objects:
        if len(inputs) > 1:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, info),) = inputs.items()
        for index, item in enumerate(instances):
            if type(item) is dict and not is_b64(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
        return InputBatch({name: _convert_column(None, info, instances)})

    required = inputs.keys()
    for index, row in enumerate(instances):
        if type(row) is not dict or is_b64(row):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        if row.keys() != required:
            mismatch = _names_mismatch(set(row), set(required))
            extra = [name for name in row if name not in required]
            if extra:  # TF Serving meets the unknown key first
                raise invalid_argument(
                    f"Failed to process element: {index} key: {extra[0]} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {extra[0]}. {mismatch}"
                )
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{preview(row)} keys must be equal to: {','.join(sorted(required))}. " + mismatch
            )
    batch = InputBatch({})
    for names in _stack_groups(inputs):
        stacked = _try_stack([[row[n] for n in names] for row in instances], inputs[names[0]], 1)
        if stacked is not None:
            batch.stacks.append((tuple(names), np.moveaxis(stacked, 1, 0)))
            for i, n in enumerate(names):
                batch.arrays[n] = stacked[:, i]
    for name, info in inputs.items():
        if name not in batch.arrays:
            batch.arrays[name] = _convert_column(name, info, [row[name] for row in instances])
    return batch


def inputs_from_columns(
    value: Any, inputs: Mapping[str, TensorInfo], model_name: str
) -> InputBatch:
    """Columnar format: ``"inputs": {name: nested list, ...}`` or a bare value for one input."""
    if type(value) is not dict or is_b64(value):
        if len(inputs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, info),) = inputs.items()
        try:
            return InputBatch({name: to_array(value, info)})
        except ServingError as exc:
            raise invalid_argument(
                f"Failed to process input: {name} of 'inputs'. Error: {exc.message}"
            ) from exc
    if value.keys() != inputs.keys():
        # TF Serving ignores extra keys here; naming them catches misspelt features early.
        mismatch = _names_mismatch(set(value), set(inputs))
        missing = [name for name in inputs if name not in value]
        if missing:
            raise invalid_argument(
                f"Missing named input: {missing[0]} in 'inputs' object. {mismatch}"
            )
        raise invalid_argument(
            f"Request inputs do not match the signature inputs of model `{model_name}`. " + mismatch
        )
    batch = InputBatch({})
    for names in _stack_groups(inputs):
        stacked = _try_stack([value[n] for n in names], inputs[names[0]], 0)
        if stacked is not None:
            batch.stacks.append((tuple(names), stacked))
            for i, n in enumerate(names):
                batch.arrays[n] = stacked[i]
    for name, info in inputs.items():
        if name in batch.arrays:
            continue
        try:
            batch.arrays[name] = to_array(value[name], info)
        except ServingError as exc:
            raise invalid_argument(
                f"Failed to process input: {name} of 'inputs' object. Error: {exc.message}"
            ) from exc
    return batch


def parse_predict_request(
    doc: dict[str, Any],
    signature_inputs: Callable[[str], Mapping[str, TensorInfo]],
    model_name: str,
) -> tuple[str, str, InputBatch]:
    """Returns (signature name, ROW or COLUMNAR, converted inputs) for a parsed request."""
    dense = next((v for v in doc.values() if isinstance(v, DenseNumbers)), None)
    if dense is not None:
        parsed = _dense_request(doc, dense, signature_inputs)
        if parsed is not None:
            return parsed
        doc = parse_json_object(dense.body)
    signature = signature_name_of(doc)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {preview(doc, 120)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if not has_instances and not has_inputs:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    inputs = signature_inputs(signature)
    if not inputs:
        raise invalid_argument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if has_instances:
        return signature, ROW, inputs_from_instances(doc["instances"], inputs, model_name)
    return signature, COLUMNAR, inputs_from_columns(doc["inputs"], inputs, model_name)


def _dense_request(
    doc: dict[str, Any],
    dense: DenseNumbers,
    signature_inputs: Callable[[str], Mapping[str, TensorInfo]],
) -> tuple[str, str, InputBatch] | None:
    signature = doc.get("signature_name", "")
    try:
        inputs = signature_inputs(signature)
    except ServingError:
        return None  # the JSON path reports a malformed body before an unknown signature
    if len(inputs) != 1:
        return None
    ((name, info),) = inputs.items()
    arr = dense.to_array(info)
    if arr is None:
        return None
    return signature, ROW if "instances" in doc else COLUMNAR, InputBatch({name: arr})


def _json_ready(name: str, arr: np.ndarray) -> Any:
    """numpy -> something orjson serialises; strings as text, or b64 for ``*_bytes`` names."""
    if arr.dtype.kind in "OSU":
        as_bytes = name.endswith("_bytes")

        def conv(item: Any) -> Any:
            if isinstance(item, str):
                item = item.encode()
            if as_bytes:
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace")

        return np.vectorize(conv, otypes=[object])(arr).tolist() if arr.size else arr.tolist()
    if arr.dtype.kind == "f":
        return float_json(arr)
    # A 0-d array is a scalar (ascontiguousarray would make it a 1-element list).
    return np.ascontiguousarray(arr) if arr.ndim else arr[()]


def predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes | list[bytes]:
    """The answer's JSON text; a single float output's comes as pieces to be sent in turn (see
    ``float_json_parts``), so that a large answer is never joined into one more copy."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    for arr in outputs.values():
        if arr.dtype.kind not in "biufOSU":  # complex: numpy's name is TF's DataTypeString
            raise invalid_argument(f"Failed to write JSON value for tensor type: {arr.dtype.name}")
    if fmt == COLUMNAR:
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
            if arr.dtype.kind == "f":
                return [b'{"outputs":', *float_json_parts(arr), b"}"]
            return orjson.dumps({"outputs": _json_ready(name, arr)}, option=_DUMPS_OPTS)
        return orjson.dumps(
            {"outputs": {name: _json_ready(name, arr) for name, arr in outputs.items()}},
            option=_DUMPS_OPTS,
        )
    batch = None
    for name, arr in outputs.items():
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and arr.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} "
                f"expecting: {batch}"
            )
        batch = arr.shape[0]
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        if arr.dtype.kind == "f":
            return [b'{"predictions":', *float_json_parts(arr), b"}"]
        return orjson.dumps({"predictions": _json_ready(name, arr)}, option=_DUMPS_OPTS)
    ready = {
        name: float_rows_json(arr) if arr.dtype.kind == "f" else _json_ready(name, arr)
        for name, arr in outputs.items()
    }
    rows = [{name: col[i] for name, col in ready.items()} for i in range(batch or 0)]
    return orjson.dumps({"predictions": rows}, option=_DUMPS_OPTS)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
