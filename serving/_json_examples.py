"""TF Serving's classify and regress JSON: ``examples`` (with ``context``) in, results out."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serving._codec import signature_name_of
from serving._errors import invalid_argument
from serving._json_numbers import float_json, float_texts
from serving._json_tensor import decode_b64, is_b64, json_type, preview

_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY

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
        elif is_b64(val):
            this, item = "bytes", decode_b64(val)
        else:
            raise invalid_argument(
                f"Feature: {name} has element with unexpected JSON type: {json_type(val)}"
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
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    return {name: _feature_from_json(name, content) for name, content in value.items()}


def parse_examples_request(
    doc: dict[str, Any], method: str
) -> tuple[str, list[dict[str, Feature]]]:
    """Returns (signature name, examples with the optional ``context`` merged in)."""
    signature = signature_name_of(doc)
    context = _example_from_json(doc["context"]) if "context" in doc else {}
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {preview(doc, 120)} When method is {method}, key 'examples' is "
            "expected and was not found"
        )
    examples = doc["examples"]
    if type(examples) is not list:
        raise invalid_argument(
            f"JSON Value: {preview(doc, 120)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise invalid_argument(
            f"JSON Value: {preview(doc, 120)} 'examples' value is an empty array"
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
