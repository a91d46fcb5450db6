"""Each pipeline step as one plain function over file paths: what a KFP component calls.

Kept free of KFP types so every step is unit-testable and runnable on its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import contract as c

log = logging.getLogger("fraud.pipeline")

SCORES_FILE = "eval_scores.npy"
VERDICT_FILE = "verdict.json"


def ingest_step(
    data_path: str,
    train_path: str,
    eval_path: str,
    *,
    label_delay_days: int,
    **window_args,
) -> dict:
    from components.steps.ingest import ingest
    from core.datajobs import data_version
    from core.windows import resolve_windows

    windows = resolve_windows(label_delay_days=label_delay_days, **window_args)
    result = ingest(data_path, windows, label_delay_days)
    for frame, path in ((result.train, train_path), (result.eval, eval_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    info = {**result.counts(), **windows.as_strings(), "data_version": data_version(data_path)}
    log.info("ingest: %s", info)
    return info


def validate_step(
    train_path: str, schema_path: str, model_base_path: str, stats_path: str, anomalies_path: str
) -> dict[str, float]:
    """Raises SchemaAnomalyError (after writing the anomaly list) when the schema is violated;
    returns drift measurements against the served model's training statistics (may be empty)."""
    from components.steps.validate import (
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


def transform_step(
    train_path: str, eval_path: str, output_dir: str, beam_args: list[str]
) -> dict[str, int]:
    from components.steps.transform import run_transform

    return run_transform(
        pd.read_parquet(train_path), pd.read_parquet(eval_path), output_dir, beam_args
    )


def train_step(transform_dir: str, model_dir: str, hparams: dict) -> dict[str, float]:
    from components.steps.trainer import HParams, export_serving_model, train
    from components.steps.transform import TRANSFORM_FN_DIR, load_transformed

    hp = HParams(**hparams)
    model, history = train(
        load_transformed(transform_dir, "train"), load_transformed(transform_dir, "valid"), hp
    )
    export_serving_model(model, Path(transform_dir) / TRANSFORM_FN_DIR, model_dir)
    (Path(model_dir) / "assets.extra").mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / "assets.extra" / "train_history.json").write_text(
        json.dumps({"hparams": asdict(hp), "history": history})
    )
    best = int(np.argmax(history["val_ap"]))
    return {
        "best_epoch": float(best + 1),
        "epochs_run": float(len(history["val_ap"])),
        "val_average_precision": history["val_ap"][best],
        "val_auc_roc": history["val_auc"][best],
    }


def evaluate_step(
    model_dir: str, eval_path: str, model_base_path: str, blessing_dir: str, gate: dict
):
    """Returns the Verdict plus the eval labels/scores for the UI's curves."""
    from components.steps.evaluator import (
        GateConfig,
        Verdict,
        bless,
        compute_metrics,
        thresholds_from_budget,
    )
    from core.model import SavedModelScorer, model_versions

    cfg = GateConfig(**gate)
    evaluation = pd.read_parquet(eval_path)
    scores = SavedModelScorer(model_dir).score(evaluation)
    candidate = compute_metrics(evaluation, scores)
    thresholds = thresholds_from_budget(scores, cfg)
    baseline = baseline_version = None
    versions = model_versions(model_base_path) if model_base_path else []
    if versions:
        baseline_version = versions[-1]
        served = SavedModelScorer(Path(model_base_path) / str(baseline_version))
        baseline = compute_metrics(evaluation, served.score(evaluation))
    blessed, reasons = bless(candidate, baseline, cfg)
    verdict = Verdict(blessed, reasons, candidate, baseline, baseline_version, thresholds)
    out = Path(blessing_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERDICT_FILE).write_text(json.dumps(verdict.to_dict(), indent=2))
    np.save(out / SCORES_FILE, scores)
    if blessed:
        log.info("evaluate: BLESSED %s (baseline v%s: %s)", candidate, baseline_version, baseline)
    else:
        log.warning("evaluate: NOT blessed: %s", "; ".join(reasons))
    return verdict, evaluation[c.LABEL].to_numpy(), scores


def push_step(
    model_dir: str,
    blessing_dir: str,
    train_path: str,
    stats_path: str,
    model_base_path: str,
    model_name: str,
    label_delay_days: int,
    split_info: Mapping[str, Any],
) -> dict:
    """Pushes only a blessed model (the gate lives here: kfp.local runs no dsl.If).

    ``split_info`` is what ingest recorded about its split (the Dataset artifact's metadata):
    the data version and the window bounds go into the model's metadata.
    """
    from components.steps.pusher import push, training_profile
    from core.metadata import ModelMetadata, Thresholds, input_specs

    if not str(model_base_path).strip():
        raise ValueError("model_base_path is empty: nowhere to push the model")
    verdict = json.loads((Path(blessing_dir) / VERDICT_FILE).read_text())
    if not verdict["blessed"]:
        log.warning("push: skipped, model not blessed: %s", "; ".join(verdict["reasons"]))
        return {"pushed": False, "reasons": verdict["reasons"]}
    train = pd.read_parquet(train_path)
    scores = np.load(Path(blessing_dir) / SCORES_FILE)
    metadata = ModelMetadata(
        model_name=model_name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics=verdict["candidate"],
        baseline={"version": verdict["baseline_version"], "metrics": verdict["baseline"]},
        thresholds=Thresholds(**verdict["thresholds"]),
        feature_inputs=input_specs(),
        stateful_features=c.STATEFUL_FEATURES,
        signature=c.SERVING_SIGNATURE,
        output=c.SCORE_OUTPUT,
        training_stats=training_profile(train, scores, verdict["thresholds"]),
        label_delay_days=label_delay_days,
        data_version=split_info.get("data_version", "unknown"),
        windows={k: v for k, v in split_info.items() if k.endswith(("_start", "_end"))},
    )
    version, target = push(model_dir, model_base_path, metadata, stats_path)
    log.info("push: model %s version %d -> %s", model_name, version, target)
    return {"pushed": True, "version": version, "path": str(target)}
