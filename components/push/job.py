"""The push step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.evaluate.job import SCORES_FILE, VERDICT_FILE
from core import contract as c

log = logging.getLogger("fraud.pipeline")


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
    from components.push.pusher import push, training_profile
    from core.metadata import ModelMetadata, Thresholds, input_specs
    from core.settings import Settings
    from serving.rollout import RolloutError, settings_rollout

    if not str(model_base_path).strip():
        raise ValueError("model_base_path is empty: nowhere to push the model")
    verdict = json.loads((Path(blessing_dir) / VERDICT_FILE).read_text())
    compared = {"model_family": verdict["model_family"], "families": verdict["families"]}
    if not verdict["blessed"]:
        log.warning("push: skipped, model not blessed: %s", "; ".join(verdict["reasons"]))
        return {"pushed": False, "reasons": verdict["reasons"], **compared}
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
        model_family=verdict["model_family"],
    )
    settings = Settings.from_env()
    rollout = settings_rollout(settings, Path(model_base_path), model_name)
    if rollout is not None:
        # A server serving the newest version on disk would take the push live on its own.
        try:
            rollout.pin()
        except RolloutError as err:
            raise RolloutError(f"push: nothing pushed: {err}") from err
    version, target = push(model_dir, model_base_path, metadata, stats_path)
    log.info("push: model %s version %d -> %s", model_name, version, target)
    serving = deploy(rollout, version, model_name, settings.rollout_mode)
    return {
        "pushed": True,
        "version": version,
        "path": str(target),
        "serving": serving,
        **compared,
    }


def deploy(rollout: Any, version: int, model_name: str, mode: str) -> str:
    """The label a pushed version serves under (``canary`` or ``stable``, by the rollout
    ``mode``), or ``unmanaged`` without a model config file (``rollout`` None: the server's
    own version policy serves the newest version)."""
    from serving.rollout import RolloutError

    if rollout is None:
        log.warning(
            "push: no model config file for %s: the server's version policy decides what "
            "serves version %d (no canary phase)",
            model_name,
            version,
        )
        return "unmanaged"
    try:
        label, _ = rollout.deploy(version, mode)
    except RolloutError as err:
        raise RolloutError(
            f"push: version {version} of {model_name} is on disk but not in service: {err}; "
            f"`fraud model canary {version}` (or `rollback --to {version}`) puts it there"
        ) from err
    log.info(
        "push: version %d of %s serves as %s (%s)", version, model_name, label, rollout.config_path
    )
    return label
