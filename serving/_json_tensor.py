"""TF Serving's JSON tensor values to numpy: one value of a REST request to one array.

The rules (``{"b64": ...}`` strings, nesting, exact-integer limits) and the error texts follow
tensorflow_serving/util/json_tensor.cc. Conversion is vectorised with numpy; the per-element walk
only runs for strings and to explain an error.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving._errors import ServingError, invalid_argument

_FLOAT32_MAX_INT = 2**24  # largest integer a float32 holds exactly (json_tensor.cc kMaxInt)
_FLOAT64_MAX_INT = 2**53
MAX_DIMS = 32  # numpy's limit on an array's dimensions (TF's own is higher)
INT_KINDS = frozenset("iu")
NUMBER_KINDS = frozenset("iuf")


@dataclass(frozen=True)
class TensorInfo:
    """What the codec needs from one signature input or output."""

    name: str
    dtype_name: str  # TF's DataTypeString: "float", "int64", "string", ...
    kind: str  # "float" | "int" | "bool" | "string"
    np_dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: unknown rank


def kind_fits(kind: str, info: TensorInfo) -> bool:
    """Whether numpy's dtype kind of converted JSON can feed the input without reinterpretation."""
    if info.kind == "float":
        return kind in NUMBER_KINDS
    if info.kind == "int":
        return kind in INT_KINDS
    return kind == "b"


def max_exact_int(dtype: np.dtype) -> int:
    """The largest integer a float input of ``dtype`` holds exactly (json_tensor.cc's kMaxInt)."""
    return _FLOAT32_MAX_INT if dtype.itemsize <= 4 else _FLOAT64_MAX_INT


def preview(value: Any, limit: int = 200) -> str:
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


def json_type(value: Any) -> str:
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


def is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def decode_b64(value: dict[str, str]) -> bytes:
    text = value["b64"]
    try:
        # absl::Base64Unescape accepts unpadded input; Python insists on padding.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_argument("Unable to base64 decode") from exc


def _type_error(leaf: Any, info: TensorInfo) -> ServingError:
    return invalid_argument(
        f"JSON Value: {preview(leaf)} Type: {json_type(leaf)} is not of expected type: "
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
    return type(leaf) is str or is_b64(leaf)


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
                    f"JSON Value: {preview(item)} found at incorrect level: {level + 1} in the "
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
    return invalid_argument(f"JSON Value: {preview(value, 80)} is not a dense tensor")


def _walk_strings(value: Any, info: TensorInfo) -> tuple[list[str | bytes], tuple[int, ...]]:
    """Flatten a (nested) list of str / b64 objects, checking it is rectangular.

    str values stay str: TF encodes them to UTF-8 itself, faster than encoding here.
    """
    if type(value) is not list:
        if type(value) is str:
            return [value], ()
        if is_b64(value):
            return [decode_b64(value)], ()
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
        f"JSON Value in {preview(value, 80)} is out of range for {info.dtype_name}"
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
        if not kind_fits(kind, info):
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
            check_range(arr, info)
        arr = arr.astype(info.np_dtype, copy=False)
    # Like TF Serving, the declared shape is not checked here: the graph's ops judge the shape.
    return arr


def check_range(arr: np.ndarray, info: TensorInfo) -> None:
    """Reject values the target dtype cannot hold, instead of silently wrapping them."""
    target = info.np_dtype
    if info.kind == "float":
        if arr.dtype.kind in INT_KINDS:
            limit = float(max_exact_int(target))
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
