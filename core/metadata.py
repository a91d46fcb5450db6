"""The model artifact's metadata: ``<model_base_path>/<version>/assets.extra/fraud_metadata.json``.

The training pipeline writes it beside every pushed version; the stream consumer (thresholds,
label delay), the drift monitor (training statistics) and batch scoring read it. The file is a
JSON object of ``ModelMetadata.to_dict()`` plus ``schema_version``. Any change to its fields
bumps ``SCHEMA_VERSION``: readers refuse a newer schema rather than guess at it. Files without
``schema_version`` are schema 1 (the layout before the field existed); schema 2 added
``model_family`` (a schema-1 file is an ``mlp``, the only family schema 1 knew).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from core import contract as c

SCHEMA_VERSION = 2
METADATA_FILE = "assets.extra/fraud_metadata.json"
SCHEMA_KEY = "schema_version"
_REQUIRED = ("model_name", "thresholds", "label_delay_days")
# Keys of ``ModelMetadata.metrics`` that live monitoring compares with: precision and recall of
# the model's alerts (score at or above the review threshold) on its evaluation window.
ALERT_PRECISION = "alert_precision"
ALERT_RECALL = "alert_recall"
# The model families the training pipeline builds (``--set model=mlp,gbt``): a Keras network
# and TF-DF gradient-boosted trees. Every family exports the same serving signature.
MLP, GBT = "mlp", "gbt"
MODEL_FAMILIES = (MLP, GBT)


class MetadataError(ValueError):
    """Model metadata that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on the model's score: review at or above ``review``, block at or
    above ``block``; finite, with 0 <= review <= block <= 1."""

    review: float
    block: float

    def __post_init__(self) -> None:
        review, block = self.review, self.block
        if not (math.isfinite(review) and math.isfinite(block) and 0 <= review <= block <= 1):
            raise MetadataError(
                f"field 'thresholds': must be finite with 0 <= review <= block <= 1, got "
                f"review={review}, block={block}"
            )

    def to_dict(self) -> dict[str, float]:
        return {c.REVIEW: self.review, c.BLOCK: self.block}


@dataclass(frozen=True)
class ModelMetadata:
    """What a pushed model version records about itself.

    ``model_name``, ``thresholds`` and ``label_delay_days`` are required; ``version`` is set at
    push time (``dataclasses.replace``) and required in a file. The rest describe how the model
    was made and default to empty, so a small test model can record only what readers need.
    ``training_stats`` is ``components.push.pusher.training_profile``'s output (the drift
    monitor's reference); ``baseline`` the served model it was compared with at evaluation;
    ``model_family`` one of ``MODEL_FAMILIES``.
    """

    model_name: str
    thresholds: Thresholds
    label_delay_days: int
    version: int | None = None
    created_at: str | None = None
    data_version: str = "unknown"
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    training_stats: dict[str, Any] = field(default_factory=dict)
    feature_inputs: tuple[dict[str, Any], ...] = ()
    stateful_features: tuple[str, ...] = ()
    signature: str = c.SERVING_SIGNATURE
    output: str = c.SCORE_OUTPUT
    windows: dict[str, str] = field(default_factory=dict)
    model_family: str = MLP

    def __post_init__(self) -> None:
        if self.model_family not in MODEL_FAMILIES:
            raise _wrong("model_family", f"one of {list(MODEL_FAMILIES)}", self.model_family)

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object, ``schema_version`` first."""
        out: dict[str, Any] = {SCHEMA_KEY: SCHEMA_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Thresholds):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [dict(v) if isinstance(v, Mapping) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "model metadata") -> ModelMetadata:
        """Parse and validate a decoded file; errors name ``source`` and the field."""
        where = str(source)
        if not isinstance(data, Mapping):
            raise MetadataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        schema = data.get(SCHEMA_KEY, 1)
        if not _is_int(schema) or schema < 1:
            raise MetadataError(f"{where}: field '{SCHEMA_KEY}' must be an integer >= 1")
        if schema > SCHEMA_VERSION:
            raise MetadataError(
                f"{where}: field '{SCHEMA_KEY}' is {schema}, newer than the {SCHEMA_VERSION} "
                "this code reads: upgrade the reader"
            )
        known = {f.name for f in fields(cls)} | {SCHEMA_KEY}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MetadataError(f"{where}: unknown fields {unknown} for schema {schema}")
        for name in _REQUIRED:
            if name not in data:
                raise MetadataError(f"{where}: required field {name!r} is missing")
        try:
            return cls(**{f.name: _parse(f.name, data) for f in fields(cls) if f.name in data})
        except MetadataError as err:
            raise MetadataError(f"{where}: {err}") from err

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelMetadata:
        """A pushed version's metadata (``version`` required); FileNotFoundError when absent."""
        path = Path(model_dir) / METADATA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: model metadata missing (was the model pushed?)")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise MetadataError(f"{path}: not valid JSON ({err})") from err
        return cls._pushed(data, path)

    @classmethod
    def _pushed(cls, data: Any, path: Path) -> ModelMetadata:
        """``from_dict`` plus what a file beside a version needs: its version."""
        meta = cls.from_dict(data, source=path)
        if meta.version is None:
            raise MetadataError(f"{path}: required field 'version' is missing (set at push)")
        return meta

    def write(self, model_dir: str | Path) -> Path:
        """Write into a version dir atomically (temp file, then rename): a reader sees the old
        file or the whole new one. ``version`` must be set; returns the file's path."""
        path = Path(model_dir) / METADATA_FILE
        text = json.dumps(self.to_dict(), indent=2, default=_plain)
        # What is written must read back: the readers' checks, before the file exists.
        self._pushed(json.loads(text), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (metrics and statistics are often computed in numpy)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wrong(name: str, expected: str, value: Any) -> MetadataError:
    return MetadataError(
        f"field {name!r} must be {expected}, got {value!r} ({type(value).__name__})"
    )


def _number(name: str, value: Any) -> float:
    if not _is_number(value):
        raise _wrong(name, "a number", value)
    return float(value)


def _parse(name: str, data: Mapping[str, Any]) -> Any:
    """One field of ``ModelMetadata`` from its JSON value, type-checked."""
    value = data[name]
    if name == "thresholds":
        if not isinstance(value, Mapping):
            raise _wrong(name, f"an object with {c.REVIEW} and {c.BLOCK}", value)
        for key in (c.REVIEW, c.BLOCK):
            if key not in value:
                raise MetadataError(f"required field 'thresholds.{key}' is missing")
        review = _number(f"thresholds.{c.REVIEW}", value[c.REVIEW])
        return Thresholds(review, _number(f"thresholds.{c.BLOCK}", value[c.BLOCK]))
    if name in ("label_delay_days", "version"):
        if not _is_int(value) or value < 0:
            raise _wrong(name, "a non-negative integer", value)
        return value
    if name in ("metrics", "baseline", "training_stats", "windows"):
        if not isinstance(value, Mapping):
            raise _wrong(name, "an object", value)
        return dict(value)
    if name == "feature_inputs":
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise _wrong(name, "a list of objects", value)
        return tuple(dict(v) for v in value)
    if name == "stateful_features":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _wrong(name, "a list of strings", value)
        return tuple(value)
    if name == "created_at" and value is None:
        return None
    if not isinstance(value, str) or (name == "model_name" and not value):
        raise _wrong(name, "a non-empty string" if name == "model_name" else "a string", value)
    return value


def parse_model_families(text: str) -> tuple[str, ...]:
    """``"mlp,gbt"`` -> ``("mlp", "gbt")``: the families a pipeline run trains, each once, in
    the order given; an empty list or an unknown family is an error that names it."""
    families = tuple(dict.fromkeys(f.strip() for f in str(text).split(",") if f.strip()))
    if not families:
        raise ValueError(f"model {text!r}: name one or more of {', '.join(MODEL_FAMILIES)}")
    if unknown := [f for f in families if f not in MODEL_FAMILIES]:
        raise ValueError(
            f"model {text!r}: unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"known: {', '.join(MODEL_FAMILIES)}"
        )
    return families


def input_specs() -> tuple[dict[str, Any], ...]:
    """``feature_inputs`` of a model over the contract's inputs."""
    return tuple(asdict(s) for s in c.INPUT_SPECS)
