"""Push: copy a blessed SavedModel into the TF Serving layout, atomically, with its metadata.

``<model_base_path>/<version>/`` appears in one rename of a fully written staging directory, so a
model server polling the base path never sees a partial version. Staging names start with '.',
which TF Serving (and our embedded server) ignore since they are not integers.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from core.features.batch import epoch_seconds
from core.metadata import ModelMetadata
from core.model import TRAIN_STATS_FILE, model_versions

PROFILE_BINS = 10


def feature_profile(values: np.ndarray, bins: int = PROFILE_BINS) -> dict:
    """Quantile bins of the training distribution: the reference for PSI / JS drift checks."""
    values = np.asarray(values, dtype=np.float64)
    quantiles = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    # Each edge sits halfway between the training values either side of its quantile, never on
    # a value: a tree model gives most transactions one same score, and an edge on it would
    # send them to one bin or the other by the last bit of a float (the REST path's float32
    # text rounds it), reading as total drift. The bins hold the same training values.
    distinct = np.unique(values)
    at = np.searchsorted(distinct, quantiles, side="left")
    inner = np.unique((distinct[at[at > 0] - 1] + distinct[at[at > 0]]) / 2)
    # Open-ended outer bins so live values outside the training range still land somewhere.
    edges = np.concatenate([[-1e300], inner, [1e300]])
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(edges) - 1)
    return {"edges": edges.tolist(), "proportions": (counts / max(len(values), 1)).tolist()}


# Days with fewer rows than this share of the median day (the split's ragged edges) are left
# out of the dispersion estimate: a part-day has another hour-of-day mix.
DISPERSION_MIN_DAY_SHARE = 0.5
# Cells expected to hold fewer rows than this in a day are left out too: their Pearson terms
# are dominated by Poisson granularity, not by how the traffic varies from day to day.
DISPERSION_MIN_EXPECTED = 5.0


def night_profile(values: np.ndarray, night: np.ndarray, day: np.ndarray, profile: dict) -> dict:
    """Joint (day/night x bin) proportions of one input over the training rows, on the bins of
    its ``feature_profile``, and how much more whole days vary around them than Poisson counts:
    the reference of the drift monitor's night-excess check.

    Cell ``b`` is the daytime share of bin ``b``, cell ``K + b`` the night-time share. The
    dispersion is the mean Pearson term (obs - exp)^2 / exp over the cells of the whole days
    (at least 1): weekday rhythm makes a day's night traffic vary more than counting noise.
    """
    values = np.asarray(values, dtype=np.float64)
    inner = np.asarray(profile["edges"][1:-1], dtype=np.float64)
    k = len(inner) + 1
    cells = np.where(night, k, 0) + np.searchsorted(inner, values, side="right")
    proportions = np.bincount(cells, minlength=2 * k) / max(len(cells), 1)
    days, day_index = np.unique(day, return_inverse=True)
    per_day = np.zeros((len(days), 2 * k))
    np.add.at(per_day, (day_index, cells), 1)
    rows = per_day.sum(axis=1)
    whole = rows >= DISPERSION_MIN_DAY_SHARE * np.median(rows) if len(rows) else rows > 0
    expected = rows[whole, None] * proportions[None, :]
    used = expected >= DISPERSION_MIN_EXPECTED
    terms = (per_day[whole] - expected)[used] ** 2 / expected[used]
    dispersion = max(1.0, float(terms.mean())) if terms.size else 1.0
    return {"proportions": proportions.tolist(), "dispersion": dispersion, "days": int(whole.sum())}


def training_profile(train: pd.DataFrame, eval_scores: np.ndarray, thresholds: dict) -> dict:
    names = [name for name in c.MODEL_INPUTS if name != c.TIMESTAMP]
    features = {name: feature_profile(train[name].to_numpy()) for name in names}
    profile = {
        "rows": len(train),
        "fraud_rate": float(train[c.LABEL].mean()),
        "features": features,
        "score": feature_profile(eval_scores),
        "expected_alert_rate": float((eval_scores >= thresholds["review"]).mean()),
        "expected_block_rate": float((eval_scores >= thresholds["block"]).mean()),
    }
    if c.TIMESTAMP in train.columns and len(train):
        t = epoch_seconds(train[c.TIMESTAMP])
        night = c.is_night(t)
        day = t // c.SECONDS_PER_DAY
        profile["night"] = {
            name: night_profile(train[name].to_numpy(), night, day, features[name])
            for name in names
        }
    return profile


def push(
    candidate_dir: str | Path,
    model_base_path: str | Path,
    metadata: ModelMetadata,
    train_stats_path: str | Path | None = None,
) -> tuple[int, Path]:
    """Stage, then rename into the next free version; returns (version, version_dir).

    ``metadata`` is written with the version it gets here.
    """
    if not str(model_base_path).strip():
        raise ValueError("model_base_path is empty: nowhere to push the model")
    candidate_dir = Path(candidate_dir)
    if not (candidate_dir / "saved_model.pb").exists():
        raise FileNotFoundError(f"{candidate_dir}: no SavedModel to push")
    base = Path(model_base_path)
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(candidate_dir, staging)
    try:
        for attempt in range(100):
            version = (model_versions(base) or [0])[-1] + 1 + attempt
            replace(metadata, version=version).write(staging)
            if train_stats_path:
                shutil.copyfile(train_stats_path, staging / TRAIN_STATS_FILE)
            target = base / str(version)
            try:
                # rename(2) onto a non-existent name is atomic; losing a race to another pusher
                # shows up as the target existing, and we take the next number.
                os.rename(staging, target)
                return version, target
            except OSError:
                if not target.exists():
                    raise
        raise RuntimeError(f"{base}: could not find a free version number")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
