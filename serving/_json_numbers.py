"""Floating-point tensors as TF Serving writes them in JSON (json_tensor.cc ``WriteDecimal``).

A value prints with ``%g`` (six significant digits) when that reads back as the same float32 /
float64, and with full precision (``%.9g`` / ``%.17g``) otherwise; a whole number that printed
with neither a ``.`` nor an exponent gets ``.0``; NaN and infinities are the bare tokens
``NaN``, ``Infinity`` and ``-Infinity``. So ``9000000.0`` is written ``9e+06`` and float32
``0.1`` is written ``0.1``.

The text is handed to orjson as a :class:`orjson.Fragment`. The choice between the two formats
is made for the whole array with numpy; only the printing itself is per element.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson

_FULL_DIGITS = {4: 9, 8: 17}  # std::numeric_limits<T>::max_digits10 of float and double
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_BLOCK_ELEMENTS = 4096


def _short_enough(flat: np.ndarray, values: list[float]) -> list[int]:
    """Indices of the values that read back unchanged from six significant digits."""
    if flat.dtype == np.float64:
        # float64 arithmetic cannot judge float64 rounding: ask the parser.
        return [i for i, v in enumerate(values) if float(f"{v:g}") == v]
    wide = flat.astype(np.float64)  # exact enough to judge a float32's 6-digit rounding
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exponent = np.floor(np.log10(np.abs(wide)))
        exponent[~np.isfinite(exponent)] = 0
        scale = 10.0 ** (5 - exponent)
        rounded = (np.round(wide * scale) / scale).astype(np.float32)
    return np.flatnonzero(rounded == flat).tolist()


def float_texts(arr: np.ndarray) -> list[str]:
    """One JSON number text per element of a float array, in C order."""
    flat = np.ascontiguousarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    flat = flat.reshape(-1)
    values = flat.tolist()
    # Most model outputs need full precision: print all that way, then shorten the rest.
    full = f"%.{_FULL_DIGITS[flat.dtype.itemsize]}g"
    texts = [full % v for v in values]
    for i in _short_enough(flat, values):
        texts[i] = f"{values[i]:g}"
    finite = np.isfinite(flat)
    odd = np.flatnonzero(~finite | (np.trunc(np.where(finite, flat, 0)) == flat))
    for i in odd.tolist():  # whole numbers and non-finite values only
        text = texts[i]
        if text in _NON_FINITE:
            texts[i] = _NON_FINITE[text]
        elif "." not in text and "e" not in text:
            texts[i] = text + ".0"
    return texts


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ",".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    parts = [_nest(texts[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
    return "[" + ",".join(parts) + "]"


def _row_blocks(arr: np.ndarray) -> Iterator[list[str]]:
    """The JSON text of each entry of the first dimension, a block of entries at a time: the
    per-element strings (about 60 bytes each) of a large output never all exist at once."""
    per_row = max(1, int(np.prod(arr.shape[1:])))
    rows_per_block = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, arr.shape[0], rows_per_block):
        block = arr[start : start + rows_per_block]
        texts = float_texts(block)
        if block.ndim == 1:
            yield texts
        else:
            yield [
                _nest(texts[i * per_row : (i + 1) * per_row], block.shape[1:])
                for i in range(block.shape[0])
            ]


def float_json_parts(arr: np.ndarray) -> Iterator[bytes]:
    """The whole array's JSON text (a scalar for 0-d) in pieces of one block each, so that a
    large response can be sent piece by piece without ever being joined."""
    if arr.ndim == 0:
        yield float_texts(arr)[0].encode()
        return
    yield b"["
    for i, rows in enumerate(_row_blocks(arr)):
        if i:
            yield b","
        yield ",".join(rows).encode()
    yield b"]"


def float_json(arr: np.ndarray) -> orjson.Fragment:
    """The whole array (a scalar for 0-d) as one JSON fragment."""
    return orjson.Fragment(b"".join(float_json_parts(arr)))


def float_rows_json(arr: np.ndarray) -> list[orjson.Fragment]:
    """One fragment per entry of the first dimension (the row format's per-instance values)."""
    return [orjson.Fragment(text) for rows in _row_blocks(arr) for text in rows]
