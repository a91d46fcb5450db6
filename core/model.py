"""Loading pushed models and scoring frames of model inputs in-process (batch scoring, evaluation).

The stream consumer scores through the TF Serving REST API instead; both feed the same
``serving_default`` signature with the contract's model inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from core.dataio import format_timestamps

TRAIN_STATS_FILE = "assets.extra/train_stats.pb"
# The ops of TF-DF's inference library (``SimpleMLCreateModelResource``,
# ``SimpleMLInferenceOpWithHandle``, ...): not TensorFlow's own, registered by importing
# tensorflow_decision_forests. TF Serving >= 2.11 links them in.
TFDF_OP_PREFIX = "SimpleML"


def model_versions(base_path: str | Path) -> list[int]:
    """Complete versions under a TF Serving base path (integer dirs holding saved_model.pb)."""
    base = Path(base_path)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in base.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists()
    )


def resolve_model_dir(path: str | Path) -> Path:
    """A version dir as given, or the latest version under a base path."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = model_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path}: neither a SavedModel nor a base path with versions")
    return path / str(versions[-1])


def saved_model_ops(model_dir: str | Path) -> set[str]:
    """Names of the ops a SavedModel's graphs and functions use (its meta graphs' op lists)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(model_dir) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except Exception as err:  # DecodeError, OSError
        raise ValueError(f"{path}: not a readable SavedModel ({err})") from err
    return {
        op.name for meta in saved_model.meta_graphs for op in meta.meta_info_def.stripped_op_list.op
    }


def register_custom_ops(op_names: Iterable[str]) -> None:
    """Register the ops among ``op_names`` that a library outside TensorFlow provides, before a
    graph using them is loaded: TF-DF's, only for a model that uses them (the import costs
    seconds and memory that a network's server does not need to pay)."""
    if any(name.startswith(TFDF_OP_PREFIX) for name in op_names):
        import tensorflow_decision_forests  # noqa: F401  (importing it registers the ops)


def input_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The serving signature's named inputs from a frame holding the contract's model inputs."""
    out = {}
    for spec in c.INPUT_SPECS:
        col = df[spec.name]
        if spec.dtype == "string":
            if pd.api.types.is_datetime64_any_dtype(col):
                col = format_timestamps(col)
            out[spec.name] = col.to_numpy(dtype=object).astype(bytes)
        else:
            out[spec.name] = col.to_numpy(dtype=np.float32)
    return out


class SavedModelScorer:
    """In-process scorer over an exported model's ``serving_default``."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16_384):
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        import tensorflow as tf

        self.model_dir = Path(model_dir)
        register_custom_ops(saved_model_ops(self.model_dir))
        self._tf = tf
        self._loaded = tf.saved_model.load(os.fspath(self.model_dir))
        self._fn = self._loaded.signatures[c.SERVING_SIGNATURE]
        self.batch_size = batch_size

    def score_arrays(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(arrays.values())))
        out = np.empty(n, dtype=np.float32)
        for lo in range(0, n, self.batch_size):
            batch = {k: self._tf.constant(v[lo : lo + self.batch_size]) for k, v in arrays.items()}
            out[lo : lo + self.batch_size] = self._fn(**batch)[c.SCORE_OUTPUT].numpy()
        return out

    def score(self, df: pd.DataFrame) -> np.ndarray:
        if df.empty:
            return np.zeros(0, dtype=np.float32)
        return self.score_arrays(input_arrays(df))
