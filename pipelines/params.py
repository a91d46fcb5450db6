"""Pipeline parameters given as text (CLI ``--set NAME=VALUE``, ``--retrain-set``): parsed and
typed by the pipeline's own input spec, in one place for every command that passes them on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_CASTS = {"Integer": int, "Float": float, "String": str}


def parse_assignments(pairs: Iterable[str] | None, flag: str = "--set") -> dict[str, str]:
    """``["epochs=3", "learning-rate=0.01"]`` -> ``{"epochs": "3", "learning_rate": "0.01"}``."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: expected NAME=VALUE")
        out[key.replace("-", "_")] = value
    return out


def typed_params(values: Mapping[str, Any], flag: str = "--set") -> dict[str, Any]:
    """Values cast to the type the pipeline declares for each; ``None`` values are left out.
    An unknown name or a value of the wrong type is an error that names both."""
    from pipelines.pipeline import create_pipeline

    inputs = create_pipeline().component_spec.inputs or {}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in inputs:
            raise ValueError(f"{flag} {key}: unknown pipeline parameter; known: {sorted(inputs)}")
        cast = _CASTS.get(str(getattr(inputs[key], "type", "String")), str)
        try:
            out[key] = cast(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{flag} {key}={value!r}: {err}") from err
    return out


def parse_params(pairs: Iterable[str] | None, flag: str = "--set") -> dict[str, Any]:
    return typed_params(parse_assignments(pairs, flag), flag) if pairs else {}
