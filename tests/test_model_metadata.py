"""The model metadata file as a typed contract: round trip, older and newer files, named errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import contract as c
from core.metadata import (
    GBT,
    METADATA_FILE,
    MLP,
    SCHEMA_VERSION,
    MetadataError,
    ModelMetadata,
    Thresholds,
    input_specs,
    parse_model_families,
)
from streaming.scoring import ScoringUnavailable, ThresholdStore

FULL = ModelMetadata(
    model_name="fraud",
    thresholds=Thresholds(0.2, 0.6),
    label_delay_days=7,
    version=4,
    created_at="2025-03-01T00:00:00+00:00",
    data_version="md5:abc",
    metrics={"auc_roc": 0.91, "average_precision": 0.5},
    baseline={"version": 3, "metrics": {"auc_roc": 0.9}},
    training_stats={"rows": 10, "expected_alert_rate": 0.01},
    feature_inputs=input_specs(),
    stateful_features=c.STATEFUL_FEATURES,
    windows={"train_start": "2025-01-01T00:00:00+00:00"},
    model_family=GBT,
)

# A file as the training pipeline pushed it before the schema had a version.
UNVERSIONED = {
    "model_name": "fraud",
    "created_at": "2025-02-01T00:00:00+00:00",
    "metrics": {"auc_roc": 0.9},
    "baseline": {"version": None, "metrics": None},
    "thresholds": {"review": 0.1, "block": 0.3},
    "feature_inputs": list(input_specs()),
    "stateful_features": list(c.STATEFUL_FEATURES),
    "signature": c.SERVING_SIGNATURE,
    "output": c.SCORE_OUTPUT,
    "training_stats": {"rows": 5},
    "label_delay_days": 7,
    "data_version": "md5:def",
    "windows": {"train_start": "2025-01-01T00:00:00+00:00"},
    "version": 2,
}


def _write_raw(version_dir: Path, data: Any) -> Path:
    path = version_dir / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    path = FULL.write(tmp_path)
    assert path == tmp_path / METADATA_FILE
    assert ModelMetadata.read(tmp_path) == FULL
    raw = json.loads(path.read_text())
    assert raw == FULL.to_dict() and raw["schema_version"] == SCHEMA_VERSION
    assert ModelMetadata.from_dict(raw) == FULL


def test_minimal_metadata_takes_the_defaults(tmp_path: Path) -> None:
    small = ModelMetadata("m", Thresholds(0.5, 0.5), label_delay_days=0, version=1)
    small.write(tmp_path)
    read = ModelMetadata.read(tmp_path)
    assert read == small
    assert (read.signature, read.output) == (c.SERVING_SIGNATURE, c.SCORE_OUTPUT)
    assert (read.metrics, read.training_stats, read.feature_inputs) == ({}, {}, ())


def test_a_file_without_schema_version_reads_as_version_1(tmp_path: Path) -> None:
    _write_raw(tmp_path, UNVERSIONED)
    meta = ModelMetadata.read(tmp_path)
    assert meta.version == 2 and meta.thresholds == Thresholds(0.1, 0.3)
    assert meta.baseline == {"version": None, "metrics": None}
    # Schema 1 knew one model family, the network.
    assert meta.model_family == MLP
    # Written again, the file keeps its keys and values and gains the current schema's.
    assert meta.to_dict() == {"schema_version": SCHEMA_VERSION, **UNVERSIONED, "model_family": MLP}


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = _write_raw(tmp_path, {**FULL.to_dict(), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(MetadataError, match="schema_version") as err:
        ModelMetadata.read(tmp_path)
    assert str(path) in str(err.value) and "newer" in str(err.value)


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in FULL.to_dict().items() if k != key}


def _with(**changes: Any) -> dict[str, Any]:
    return {**FULL.to_dict(), **changes}


BAD_FILES: dict[str, tuple[Any, str]] = {
    "no model_name": (_without("model_name"), "'model_name'"),
    "empty model_name": (_with(model_name=""), "'model_name'"),
    "no thresholds": (_without("thresholds"), "'thresholds'"),
    "no label_delay_days": (_without("label_delay_days"), "'label_delay_days'"),
    "no version": (_without("version"), "'version'"),
    "no review": (_with(thresholds={"block": 0.5}), "'thresholds.review'"),
    "block as text": (_with(thresholds={"review": 0.1, "block": "0.5"}), "'thresholds.block'"),
    "review above block": (_with(thresholds={"review": 0.6, "block": 0.5}), "'thresholds'"),
    "block above 1": (_with(thresholds={"review": 0.6, "block": 1.5}), "'thresholds'"),
    "negative review": (_with(thresholds={"review": -0.1, "block": 0.5}), "'thresholds'"),
    "NaN review": (_with(thresholds={"review": math.nan, "block": 0.5}), "'thresholds'"),
    "thresholds a list": (_with(thresholds=[0.1, 0.5]), "'thresholds'"),
    "delay as text": (_with(label_delay_days="7"), "'label_delay_days'"),
    "delay a bool": (_with(label_delay_days=True), "'label_delay_days'"),
    "delay negative": (_with(label_delay_days=-1), "'label_delay_days'"),
    "version as text": (_with(version="4"), "'version'"),
    "metrics a list": (_with(metrics=[0.9]), "'metrics'"),
    "training_stats null": (_with(training_stats=None), "'training_stats'"),
    "feature_inputs names": (_with(feature_inputs=list(c.MODEL_INPUTS)), "'feature_inputs'"),
    "stateful_features numbers": (_with(stateful_features=[1]), "'stateful_features'"),
    "signature a number": (_with(signature=1), "'signature'"),
    "unknown model_family": (_with(model_family="forest"), "'model_family'"),
    "model_family a number": (_with(model_family=2), "'model_family'"),
    "schema_version as text": (_with(schema_version="1"), "'schema_version'"),
    "misspelt field": (_with(thresold={"review": 0.1}), "'thresold'"),
    "not an object": ([FULL.to_dict()], "JSON object"),
}


@pytest.mark.parametrize("data, field", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_each_bad_field_is_named_with_the_file(tmp_path: Path, data: Any, field: str) -> None:
    path = _write_raw(tmp_path, data)
    with pytest.raises(MetadataError) as err:
        ModelMetadata.read(tmp_path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / METADATA_FILE
    path.parent.mkdir(parents=True)
    path.write_text('{"model_name": ')
    with pytest.raises(MetadataError, match="not valid JSON") as err:
        ModelMetadata.read(tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="metadata missing"):
        ModelMetadata.read(tmp_path / "other")


def test_thresholds_are_checked_when_made() -> None:
    for review, block in ((0.5, 0.4), (-0.1, 0.5), (0.1, math.inf), (math.nan, 0.5)):
        with pytest.raises(MetadataError, match="review <= block"):
            Thresholds(review, block)


def test_write_needs_a_version_and_a_valid_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="'version'"):
        replace(FULL, version=None).write(tmp_path)
    with pytest.raises(MetadataError, match="'stateful_features'"):
        replace(FULL, stateful_features=(1, 2)).write(tmp_path)
    assert not (tmp_path / METADATA_FILE).parent.exists()


def test_numpy_values_are_written_as_plain_numbers(tmp_path: Path) -> None:
    meta = replace(FULL, metrics={"auc_roc": np.float32(0.5), "positives": np.int64(3)})
    meta.write(tmp_path)
    assert ModelMetadata.read(tmp_path).metrics == {"auc_roc": 0.5, "positives": 3}


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    extra = (tmp_path / METADATA_FILE).parent
    FULL.write(tmp_path)
    replace(FULL, model_name="other").write(tmp_path)  # replaces the file in one rename
    assert [p.name for p in extra.iterdir()] == [Path(METADATA_FILE).name]
    assert ModelMetadata.read(tmp_path).model_name == "other"
    # A rename that fails (the name is taken by a directory) leaves no temp file behind.
    blocked = tmp_path / "blocked"
    (blocked / METADATA_FILE / "occupied").mkdir(parents=True)
    with pytest.raises(OSError):
        FULL.write(blocked)
    assert [p.name for p in (blocked / METADATA_FILE).parent.iterdir()] == [
        Path(METADATA_FILE).name
    ]


def test_threshold_store_names_the_file_and_chains_the_error(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "1", {**FULL.to_dict(), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ScoringUnavailable) as err:
        ThresholdStore(tmp_path).get(1)
    assert str(path) in str(err.value) and isinstance(err.value.__cause__, MetadataError)


def test_model_families_are_parsed_once_each_in_order() -> None:
    assert parse_model_families("gbt, mlp,gbt") == (GBT, MLP)
    assert parse_model_families(MLP) == (MLP,)
    with pytest.raises(ValueError, match=r"unknown family \['forest'\]; known: mlp, gbt"):
        parse_model_families("mlp,forest")
    with pytest.raises(ValueError, match="name one or more of mlp, gbt"):
        parse_model_families(" , ")
    with pytest.raises(MetadataError, match="'model_family'"):
        replace(FULL, model_family="forest")
