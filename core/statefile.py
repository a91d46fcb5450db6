"""Versioned, data-only state files: JSON (orjson) with a format name and a schema version.

What the streaming consumer persists (feature snapshots, the drift monitor's state) lives on a
volume that other processes may be able to write. Reading such a file must never run code, so
it holds plain data (JSON objects, arrays, strings, numbers), never a pickle. Every document
carries ``format`` and ``version``; a reader accepts exactly its own pair and refuses anything
else (another format, another schema version, a pickle of an older release, a corrupt file)
with a ``StateFileError`` that names the file and says to move it away. A pickle is recognised
by its first byte and never handed to ``pickle``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson

FORMAT = "format"
VERSION = "version"
# Pickle protocols 2 and later start with the PROTO opcode; every release that wrote pickles
# used the highest protocol.
_PICKLE_PROTO = b"\x80"


class StateFileError(ValueError):
    """A state file this release cannot read; the message names the file and what to do."""


def stamp(fmt: str, version: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as a document of format ``fmt``, schema ``version``."""
    return {FORMAT: fmt, VERSION: version, **body}


def dumps(document: Mapping[str, Any]) -> bytes:
    """The document as JSON (numpy arrays and scalars as JSON numbers)."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(blob: bytes, fmt: str, version: int, where: str, remedy: str) -> dict[str, Any]:
    """The document in ``blob`` if it is a ``fmt`` document of schema ``version``.

    ``where`` names the source (a file path) and ``remedy`` says what to do with a refused one;
    both go into the error.
    """
    if blob[:1] == _PICKLE_PROTO:
        raise StateFileError(
            f"{where}: a pickle (written by an older release), not a {fmt} document; it is not "
            f"read, since unpickling can run code: {remedy}"
        )
    try:
        document = orjson.loads(blob)
    except orjson.JSONDecodeError as err:
        raise StateFileError(f"{where}: not a {fmt} document (not JSON: {err}): {remedy}") from err
    return check(document, fmt, version, where, remedy)


def check(document: Any, fmt: str, version: int, where: str, remedy: str) -> dict[str, Any]:
    """``document`` itself if its format and version are ``fmt`` and ``version``."""
    found = document.get(FORMAT) if isinstance(document, dict) else None
    if found != fmt:
        raise StateFileError(f"{where}: format {found!r}, expected {fmt!r}: {remedy}")
    if document.get(VERSION) != version:
        raise StateFileError(
            f"{where}: {fmt} version {document.get(VERSION)!r}, this release reads version "
            f"{version} only (written by another release): {remedy}"
        )
    return document


@contextmanager
def reading(where: str, fmt: str, remedy: str) -> Iterator[None]:
    """Turns what a malformed document raises while it is taken apart into a StateFileError."""
    try:
        yield
    except StateFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise StateFileError(f"{where}: malformed {fmt} document ({err!r}): {remedy}") from err


def pack_floats(lists: Iterable[list[float]]) -> str:
    """The floats of ``lists``, concatenated, as base64 of little-endian IEEE-754 doubles.

    Bit-exact (NaN and infinities included), and about three times faster to encode than the
    same floats as JSON numbers, which need a shortest round-trip decimal each.
    """
    flat: list[float] = []
    for values in lists:
        flat += values
    return base64.b64encode(struct.pack(f"<{len(flat)}d", *flat)).decode("ascii")


def unpack_floats(text: str) -> list[float]:
    """The inverse of ``pack_floats`` (one flat list)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 8:
        raise ValueError(f"packed doubles of {len(raw)} bytes, not a multiple of 8")
    return list(struct.unpack(f"<{len(raw) // 8}d", raw))


def int_lists(lists: list[Any], what: str) -> list[list[int]]:
    """``lists`` itself if it is a list of lists of ints, else ValueError naming ``what``."""
    if not isinstance(lists, list) or not all(
        type(values) is list and all(type(x) is int for x in values) for values in lists
    ):
        raise ValueError(f"{what} must be lists of integers")
    return lists


def str_lists(lists: list[Any], what: str) -> list[list[str]]:
    """``lists`` itself if it is a list of lists of strings, else ValueError naming ``what``."""
    if not isinstance(lists, list) or not all(
        type(values) is list and all(type(x) is str for x in values) for values in lists
    ):
        raise ValueError(f"{what} must be lists of strings")
    return lists
