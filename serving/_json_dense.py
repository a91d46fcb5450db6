"""Large dense float vectors converted without holding a Python object per number.

A JSON parser builds one Python object per number: a float costs 24 bytes plus an 8-byte list
slot for as little as 4 bytes of text (``1.5,``), so a dense numeric body near the size cap would
cost about 20 times its size. A body of at least ``DENSE_MIN_BYTES`` whose only tensor value is a
flat array holding nothing but numbers is parsed a chunk at a time into one array. Whatever this
path cannot convert exactly as the JSON path would (other dtypes and ranks, integers beyond the
float's exact range, anything but plain JSON numbers) goes back to the JSON path, which also
words every error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving._json_tensor import TensorInfo, max_exact_int

DENSE_MIN_BYTES = 1 << 20  # below this the JSON path's objects cost a few megabytes at most

_WS = rb"[ \t\n\r]*"
_SIG = rb'"signature_name"' + _WS + rb":" + _WS + rb'"([A-Za-z0-9_./:-]*)"'
_HEAD = re.compile(
    rb"\A"
    + _WS
    + rb"\{"
    + _WS
    + rb"(?:"
    + _SIG
    + _WS
    + rb","
    + _WS
    + rb")?"
    + rb'"(instances|inputs)"'
    + _WS
    + rb":"
    + _WS
    + rb"\["
)
_TAIL = re.compile(
    rb"\]" + rb"(?:" + _WS + rb"," + _WS + _SIG + rb")?" + _WS + rb"\}" + _WS + rb"\Z"
)
_NUMBER_CHARS = b"0123456789.eE+-, \t\n\r"  # no literals, strings or nesting: plain numbers
_CHUNK_BYTES = 1 << 14  # the JSON objects of one chunk at a time: a few hundred KB at most
# TensorFlow feeds an ndarray without copying it only when its data is aligned as Eigen wants
# (at most 64 bytes); a large numpy array starts 16 bytes into its page.
_FEED_ALIGN = 64


@dataclass
class DenseNumbers:
    """The text of one flat array of JSON numbers, converted when the input's dtype is known."""

    body: bytes | bytearray
    start: int  # just after the opening bracket
    end: int  # at the closing bracket

    def to_array(self, info: TensorInfo) -> np.ndarray | None:
        """The array the JSON path would make for ``info``, or None to take that path.

        The text is parsed by the same JSON parser a chunk at a time, each chunk cut at a comma,
        into an array allocated once.
        """
        if info.kind != "float" or info.np_dtype not in (np.float32, np.float64):
            return None
        body, end, limit = self.body, self.end, max_exact_int(info.np_dtype)
        out = aligned_empty(body.count(b",", self.start, end) + 1, info.np_dtype)
        filled, pos = 0, self.start
        while pos < end:
            cut = body.find(b",", min(pos + _CHUNK_BYTES, end), end)
            cut = end if cut < 0 else cut
            chunk = body[pos:cut]
            if chunk.translate(None, _NUMBER_CHARS):
                return None
            try:
                part = np.asarray(orjson.loads(b"[" + chunk + b"]"), dtype=np.float64)
            except orjson.JSONDecodeError:
                return None
            # From the exact limit on, the JSON path words the rounding error.
            if part.size > out.size - filled or (
                part.size and (part.max() >= limit or part.min() <= -limit)
            ):
                return None
            out[filled : filled + part.size] = part
            filled, pos = filled + part.size, cut + 1
        return out if filled == out.size else None


def aligned_empty(size: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised 1-d array whose data TensorFlow can feed in place."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + _FEED_ALIGN, np.uint8)
    skip = -raw.ctypes.data % _FEED_ALIGN
    return raw[skip : skip + size * dtype.itemsize].view(dtype)


def dense_document(body: bytes | bytearray) -> dict[str, Any] | None:
    """``{"instances" | "inputs": DenseNumbers, ["signature_name": str]}``, or None."""
    if len(body) < DENSE_MIN_BYTES:
        return None
    head = _HEAD.match(body)
    if head is None:
        return None
    end = body.find(b"]", head.end())
    if end < 0 or body.find(b"[", head.end(), end) >= 0:
        return None
    tail = _TAIL.match(body, end)
    if tail is None or (head.group(1) is not None and tail.group(1) is not None):
        return None
    doc: dict[str, Any] = {head.group(2).decode(): DenseNumbers(body, head.end(), end)}
    signature = head.group(1) if head.group(1) is not None else tail.group(1)
    if signature is not None:
        doc["signature_name"] = signature.decode()
    return doc
