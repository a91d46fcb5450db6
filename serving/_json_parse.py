"""Request bodies that strict JSON refuses but TF Serving's parser accepts, and its error texts.

TF Serving parses with rapidjson's ``kParseNanAndInfFlag`` (``NaN``, ``Infinity`` and
``-Infinity`` are numbers) and reports rapidjson's own error texts (``GetParseError_En``) with
the offset. The server tries the fast strict parser first and comes here only when it refuses.
"""

from __future__ import annotations

import json
from typing import Any

from serving._errors import ServingError, invalid_argument

# Python's json error texts -> rapidjson's (GetParseError_En), which TF Serving reports.
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
)


def _innermost_container(doc: str, pos: int) -> str:
    """``[`` or ``{``: the container open at ``pos`` (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _parse_error(exc: json.JSONDecodeError, offset: int) -> ServingError:
    message = exc.msg
    for python_text, rapidjson_text in _PARSE_ERRORS:
        if message.startswith(python_text):
            message = rapidjson_text
            break
    else:
        if message.startswith("Expecting ',' delimiter"):
            message = (
                "Missing a comma or ']' after an array element."
                if _innermost_container(exc.doc, exc.pos) == "["
                else "Missing a comma or '}' after an object member."
            )
    return invalid_argument(f"JSON Parse error: {message} at offset: {exc.pos + offset}")


def lenient_loads(body: bytes | bytearray) -> Any:
    """What TF Serving's parser accepts beyond strict JSON: ``NaN``, ``Infinity`` and
    ``-Infinity``, and content after the first complete value (it stops there)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    if not stripped:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return json.JSONDecoder().raw_decode(stripped)[0]
    except json.JSONDecodeError as exc:
        raise _parse_error(exc, offset) from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None
