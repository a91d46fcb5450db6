"""TF Serving's REST JSON encoding: request bodies to numpy arrays, outputs back to JSON.

The rules (row vs columnar format, ``{"b64": ...}`` strings, ``_bytes`` output names, the
classify/regress ``examples``) and the error texts follow tensorflow_serving/util/json_tensor.cc.
Conversion is vectorised with numpy; the per-element walk only runs for strings and to explain
an error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving._errors import ServingError, invalid_argument
from serving._json_numbers import float_json, float_rows_json, float_texts
from serving._json_parse import lenient_loads

ROW, COLUMNAR = "row", "columnar"
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY
_FLOAT32_MAX_INT = 2**24  # largest integer a float32 holds exactly (json_tensor.cc kMaxInt)
_FLOAT64_MAX_INT = 2**53
MAX_DIMS = 32  # numpy's limit on an array's dimensions (TF's own is higher)
_INT_KINDS = frozenset("iu")
_NUMBER_KINDS = frozenset("iuf")


@dataclass(frozen=True)
class TensorInfo:
    """What the codec needs from one signature input or output."""

    name: str
    dtype_name: str  # TF's DataTypeString: "float", "int64", "string", ...
    kind: str  # "float" | "int" | "bool" | "string"
    np_dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: unknown rank


def _preview(value: Any, limit: int = 200) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson refuses deep nesting (and non-JSON types)
        try:
            text = repr(value)
        except RecursionError:
            text = "<value nested too deeply to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def _too_deep() -> ServingError:
    return invalid_argument(
        f"JSON value is nested more than {MAX_DIMS} lists deep; a tensor has at most {MAX_DIMS} "
        "dimensions here"
    )


def _check_depth(value: Any) -> None:
    """Refuse more dimensions than a tensor (here: a numpy array) can have.

    Follows first elements only, as TF Serving derives a tensor's shape; deeper nesting
    elsewhere is a ragged list, reported as such.
    """
    depth = 0
    while type(value) is list and value:
        depth += 1
        if depth > MAX_DIMS:
            raise _too_deep()
        value = value[0]


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _decode_b64(value: dict[str, str]) -> bytes:
    text = value["b64"]
    try:
        # absl::Base64Unescape accepts unpadded input; Python insists on padding.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_argument("Unable to base64 decode") from exc


def _type_error(leaf: Any, info: TensorInfo) -> ServingError:
    return invalid_argument(
        f"JSON Value: {_preview(leaf)} Type: {_json_type(leaf)} is not of expected type: "
        f"{info.dtype_name}"
    )


def _leaf_ok(leaf: Any, info: TensorInfo) -> bool:
    kind = info.kind
    if kind == "float":
        return type(leaf) in (int, float)
    if kind == "int":
        return type(leaf) is int
    if kind == "bool":
        return type(leaf) is bool
    return type(leaf) is str or _is_b64(leaf)


_ALL_LEAVES_OK = object()  # None is a legitimate bad leaf (JSON null)


def _first_bad_leaf(value: Any, info: TensorInfo) -> Any:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(reversed(item))
        elif not _leaf_ok(item, info):
            return item
    return _ALL_LEAVES_OK


def _ragged_error(value: Any) -> ServingError:
    """Why a nested list is not a dense tensor, in the words of json_tensor.cc's
    FillTensorProto: the shape is taken from the first elements, every list is held to it."""
    shape: list[int] = []
    probe = value
    while type(probe) is list:
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    rank = len(shape)
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if type(item) is not list:
            if level != rank:
                return invalid_argument(
                    f"JSON Value: {_preview(item)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {rank}"
                )
            continue
        if level >= rank:
            return invalid_argument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(item) != shape[level]:
            return invalid_argument(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected "
                f"size: {shape[level]}"
            )
        stack.extend((child, level + 1) for child in reversed(item))
    return invalid_argument(f"JSON Value: {_preview(value, 80)} is not a dense tensor")


def _walk_strings(value: Any, info: TensorInfo) -> tuple[list[str | bytes], tuple[int, ...]]:
    """Flatten a (nested) list of str / b64 objects, checking it is rectangular.

    str values stay str: TF encodes them to UTF-8 itself, faster than encoding here.
    """
    if type(value) is not list:
        if type(value) is str:
            return [value], ()
        if _is_b64(value):
            return [_decode_b64(value)], ()
        raise _type_error(value, info)
    if value and all(type(v) is str for v in value):  # the common 1-D case
        return value, (len(value),)
    flat: list[str | bytes] = []
    inner: tuple[int, ...] | None = None
    for item in value:
        item_flat, item_shape = _walk_strings(item, info)
        if inner is None:
            inner = item_shape
        elif item_shape != inner:
            raise _ragged_error(value)
        flat.extend(item_flat)
    return flat, (len(value), *(inner or ()))


def _out_of_range(value: Any, info: TensorInfo) -> ServingError:
    return invalid_argument(
        f"JSON Value in {_preview(value, 80)} is out of range for {info.dtype_name}"
    )


def to_array(value: Any, info: TensorInfo) -> np.ndarray:
    """Convert a JSON value (scalar or nested lists) to an array of the input's dtype."""
    _check_depth(value)
    if info.kind == "string":
        try:
            flat, shape = _walk_strings(value, info)
        except RecursionError:  # a ragged list hiding deep nesting behind a short first element
            raise _too_deep() from None
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        arr = arr.reshape(shape)
    else:
        try:
            arr = np.asarray(value)
        except ValueError as exc:
            raise _ragged_error(value) from exc
        except OverflowError as exc:
            raise _out_of_range(value, info) from exc
        kind = arr.dtype.kind
        ok = (
            kind in _NUMBER_KINDS
            if info.kind == "float"
            else kind in _INT_KINDS
            if info.kind == "int"
            else kind == "b"
        )
        if not ok:
            bad = _first_bad_leaf(value, info)
            if bad is not _ALL_LEAVES_OK:
                raise _type_error(bad, info)
            # All leaves are fine, so either the list is ragged, or its integers span more than
            # int64 and uint64 together (numpy then keeps Python ints): only the target can say.
            if info.kind != "int":
                raise _ragged_error(value)
            try:
                arr = np.asarray(value, dtype=info.np_dtype)
            except ValueError:
                raise _ragged_error(value) from None
            except OverflowError:
                raise _out_of_range(value, info) from None
            kind = arr.dtype.kind
        if arr.size and kind != "b":
            _check_range(arr, info)
        arr = arr.astype(info.np_dtype, copy=False)
    # Like TF Serving, the declared shape is not checked here: the graph's ops judge the shape.
    return arr


def _check_range(arr: np.ndarray, info: TensorInfo) -> None:
    """Reject values the target dtype cannot hold, instead of silently wrapping them."""
    target = info.np_dtype
    if info.kind == "float":
        if arr.dtype.kind in _INT_KINDS:
            limit = float(_FLOAT32_MAX_INT if target.itemsize <= 4 else _FLOAT64_MAX_INT)
        else:
            limit = float(np.finfo(target).max)
        # Two reductions, no temporaries: the common case is "all fine".
        if arr.max() > limit or arr.min() < -limit:
            bad = np.abs(arr) > limit
            if arr.dtype.kind == "f":
                bad &= np.isfinite(arr)  # JSON has no inf; a float64 overflow is already inf
            if not bad.any():
                return
            value = arr[bad].flat[0].item()
            raise invalid_argument(
                f"Cannot convert JSON value: {value!r} to {info.dtype_name} without loss of "
                "precision."
            )
        return
    bounds = np.iinfo(target)
    lo, hi = arr.min(), arr.max()
    if lo < bounds.min or hi > bounds.max:
        value = (lo if lo < bounds.min else hi).item()
        raise invalid_argument(f"JSON Value: {value} is out of range for {info.dtype_name}")


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # The strict fast parser refused it: NaN, a trailing token, or a real error.
        doc = lenient_loads(body)
    if type(doc) is not dict:
        raise invalid_argument(f"JSON Value: {_preview(doc)} Is not object")
    return doc


def signature_name_of(doc: Mapping[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if type(name) is not str:
        raise invalid_argument(
            f"JSON Value: {_preview(dict(doc))} not formatted correctly. 'signature_name' key "
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


def _try_stack(values: list[Any], info: TensorInfo, axis: int) -> np.ndarray | None:
    """Convert several same-spec inputs at once; None means "do it one by one" (which also
    produces the precise error message if something is wrong)."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        return None
    kind = arr.dtype.kind
    ok = (
        kind in _NUMBER_KINDS
        if info.kind == "float"
        else kind in _INT_KINDS
        if info.kind == "int"
        else kind == "b"
    )
    if not ok or arr.ndim != len(info.shape or ()) + 1:
        return None
    if arr.size and kind != "b":
        try:
            _check_range(arr, info)
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
    objects = type(first) is dict and not _is_b64(first)
    if not objects:
        if len(inputs) > 1:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, info),) = inputs.items()
        for index, item in enumerate(instances):
            if type(item) is dict and not _is_b64(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
        return InputBatch({name: _convert_column(None, info, instances)})

    required = inputs.keys()
    for index, row in enumerate(instances):
        if type(row) is not dict or _is_b64(row):
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
                f"{_preview(row)} keys must be equal to: {','.join(sorted(required))}. " + mismatch
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
    if type(value) is not dict or _is_b64(value):
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
    signature = signature_name_of(doc)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {_preview(doc, 120)} Not formatted correctly expecting only one of "
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


def predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    for arr in outputs.values():
        if arr.dtype.kind not in "biufOSU":  # complex: numpy's name is TF's DataTypeString
            raise invalid_argument(f"Failed to write JSON value for tensor type: {arr.dtype.name}")
    if fmt == COLUMNAR:
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
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
        return orjson.dumps({"predictions": _json_ready(name, arr)}, option=_DUMPS_OPTS)
    ready = {
        name: float_rows_json(arr) if arr.dtype.kind == "f" else _json_ready(name, arr)
        for name, arr in outputs.items()
    }
    rows = [{name: col[i] for name, col in ready.items()} for i in range(batch or 0)]
    return orjson.dumps({"predictions": rows}, option=_DUMPS_OPTS)


# --- classify / regress -------------------------------------------------------------------------

Feature = tuple[str, list[Any]]  # ("bytes" | "float" | "int64", values)


def _feature_from_json(name: str, content: Any) -> Feature:
    values = content if type(content) is list else [content]
    kind: str | None = None
    out: list[Any] = []
    for val in values:
        if type(val) is bool:
            this, item = "int64", int(val)
        elif type(val) is int:
            if not -(2**63) <= val < 2**63:
                raise invalid_argument(
                    f"Feature: {name} has uint64 element. Only int64_t is supported."
                )
            this, item = "int64", val
        elif type(val) is float:
            this, item = "float", val
        elif type(val) is str:
            this, item = "bytes", val.encode()
        elif _is_b64(val):
            this, item = "bytes", _decode_b64(val)
        else:
            raise invalid_argument(
                f"Feature: {name} has element with unexpected JSON type: {_json_type(val)}"
            )
        if kind is not None and this != kind:
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {kind}"
            )
        kind = kind or this
        out.append(item)
    return (kind or "float", out)


def _example_from_json(value: Any) -> dict[str, Feature]:
    if type(value) is not dict:
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    return {name: _feature_from_json(name, content) for name, content in value.items()}


def parse_examples_request(
    doc: dict[str, Any], method: str
) -> tuple[str, list[dict[str, Feature]]]:
    """Returns (signature name, examples with the optional ``context`` merged in)."""
    signature = signature_name_of(doc)
    context = _example_from_json(doc["context"]) if "context" in doc else {}
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {_preview(doc, 120)} When method is {method}, key 'examples' is "
            "expected and was not found"
        )
    examples = doc["examples"]
    if type(examples) is not list:
        raise invalid_argument(
            f"JSON Value: {_preview(doc, 120)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise invalid_argument(
            f"JSON Value: {_preview(doc, 120)} 'examples' value is an empty array"
        )
    # Serialising context + example concatenates the protos, so example features win.
    return signature, [{**context, **_example_from_json(ex)} for ex in examples]


def classify_response(classes: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    ref = classes if classes is not None else scores
    assert ref is not None
    n, k = ref.shape
    score_texts = float_texts(scores if scores is not None else np.zeros((n, k), np.float32))
    results = []
    for i in range(n):
        row = []
        for c in range(k):
            label = classes[i, c] if classes is not None else b""
            if isinstance(label, bytes):
                label = label.decode("utf-8", errors="replace")
            row.append([label, orjson.Fragment(score_texts[i * k + c])])
        results.append(row)
    return orjson.dumps({"results": results}, option=_DUMPS_OPTS)


def regress_response(values: np.ndarray) -> bytes:
    return orjson.dumps({"results": float_json(values.reshape(-1))})


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
