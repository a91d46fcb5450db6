"""The validate step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger("fraud.pipeline")


def validate_step(
    train_path: str, schema_path: str, model_base_path: str, stats_path: str, anomalies_path: str
) -> dict[str, float]:
    """Raises SchemaAnomalyError (after writing the anomaly list) when the schema is violated;
    returns drift measurements against the served model's training statistics (may be empty)."""
    from components.validate.validate import (
        DEFAULT_SCHEMA_PATH,
        SchemaAnomalyError,
        anomalies_of,
        compute_statistics,
        drift_of,
        load_schema,
        read_stats,
        write_stats,
    )
    from core.model import TRAIN_STATS_FILE, model_versions

    train = pd.read_parquet(train_path)
    schema = load_schema(schema_path or DEFAULT_SCHEMA_PATH)
    stats = compute_statistics(train)
    write_stats(stats, stats_path)
    anomalies = anomalies_of(stats, schema)
    Path(anomalies_path).parent.mkdir(parents=True, exist_ok=True)
    Path(anomalies_path).write_text(json.dumps(anomalies, indent=2))
    if anomalies:
        for name, text in sorted(anomalies.items()):
            log.error("anomaly in %s: %s", name, text)
        raise SchemaAnomalyError(anomalies, f"training split {train_path}")
    drift: dict[str, float] = {}
    versions = model_versions(model_base_path) if model_base_path else []
    if versions:
        baseline = Path(model_base_path) / str(versions[-1]) / TRAIN_STATS_FILE
        if baseline.exists():
            drift = drift_of(stats, read_stats(baseline), schema)
            drift["baseline_version"] = float(versions[-1])
    log.info("validate: no anomalies; drift vs served model: %s", drift)
    return drift
