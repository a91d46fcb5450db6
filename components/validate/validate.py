"""Validate: TFDV statistics of the training split against the curated, checked-in schema.

Anomalies fail the run. Drift against the statistics of the served model's training data is
measured with the comparators configured in the schema and reported as metrics, not failures:
retraining on drifted data is exactly what the platform must be able to do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core import contract as c
from core.dataio import format_timestamps

DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "pipelines" / "schema" / "schema.pbtxt"
JS_THRESHOLD = 0.1  # Jensen-Shannon divergence between this and the served model's training data
LINF_THRESHOLD = 0.05  # L-infinity distance for the categorical label distribution


class SchemaAnomalyError(ValueError):
    def __init__(self, anomalies: dict[str, str], source: str):
        self.anomalies = anomalies
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(anomalies.items()))
        super().__init__(f"{source}: {len(anomalies)} schema anomaly(ies): {listing}")


def stats_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The columns TFDV sees: model inputs and the label, timestamps as their wire strings."""
    out = df[[*c.MODEL_INPUTS, c.LABEL]].copy()
    if pd.api.types.is_datetime64_any_dtype(out[c.TIMESTAMP]):
        out[c.TIMESTAMP] = format_timestamps(out[c.TIMESTAMP])
    return out


def compute_statistics(df: pd.DataFrame):
    import tensorflow_data_validation as tfdv

    return tfdv.generate_statistics_from_dataframe(stats_frame(df))


def curate_schema(stats):
    """Infer a schema, then state what we know about the contract that inference cannot guess."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    for feature in schema.feature:
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        name = feature.name
        if name == c.TIMESTAMP:
            # Unique per row: a vocabulary domain would flag every new day as an anomaly.
            feature.ClearField("domain")
            feature.ClearField("string_domain")
        elif name == c.LABEL:
            feature.int_domain.min = 0
            feature.int_domain.max = 1
            feature.int_domain.is_categorical = True
            feature.drift_comparator.infinity_norm.threshold = LINF_THRESHOLD
        elif feature.type == schema_pb2.FLOAT:
            feature.float_domain.min = 0.0
            if name.startswith("terminal_fraud_ratio"):
                feature.float_domain.max = 1.0
            feature.drift_comparator.jensen_shannon_divergence.threshold = JS_THRESHOLD
    schema.ClearField("string_domain")
    return schema


def load_schema(path: str | Path = DEFAULT_SCHEMA_PATH):
    import tensorflow_data_validation as tfdv

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: schema not found (create it with `fraud schema infer`)")
    return tfdv.load_schema_text(str(path))


def write_schema(schema, path: str | Path) -> Path:
    import tensorflow_data_validation as tfdv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tfdv.write_schema_text(schema, str(path))
    return path


def anomalies_of(stats, schema) -> dict[str, str]:
    import tensorflow_data_validation as tfdv

    found = tfdv.validate_statistics(stats, schema)
    return {name: info.description for name, info in found.anomaly_info.items()}


def drift_of(stats, baseline_stats, schema) -> dict[str, float]:
    """Per-feature drift measurements (``<feature>_<measure>``) against a baseline's statistics."""
    import tensorflow_data_validation as tfdv

    found = tfdv.validate_statistics(stats, schema, previous_statistics=baseline_stats)
    out = {}
    for info in found.drift_skew_info:
        feature = "/".join(info.path.step)
        for m in info.drift_measurements:
            measure = "js" if m.type == m.JENSEN_SHANNON_DIVERGENCE else "linf"
            out[f"{feature}_{measure}"] = float(m.value)
    return out


def read_stats(path: str | Path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    return statistics_pb2.DatasetFeatureStatisticsList.FromString(Path(path).read_bytes())


def write_stats(stats, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stats.SerializeToString())
    return path
