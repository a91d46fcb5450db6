"""The train step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper). One run trains every selected model family on the same split
and exports each to ``<model_dir>/<family>/``, a SavedModel with the TFT graph and the contract's
serving signature; evaluate compares them and hands the best on to push.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.metadata import GBT, MLP, MODEL_FAMILIES

# Each family's parameters and fitting history, in its export (beside core.metadata's file).
TRAIN_HISTORY_FILE = "assets.extra/train_history.json"


def family_dirs(model_dir: str | Path) -> dict[str, Path]:
    """The families a train step exported under ``model_dir``, in ``MODEL_FAMILIES`` order."""
    base = Path(model_dir)
    found = {f: base / f for f in MODEL_FAMILIES if (base / f / "saved_model.pb").exists()}
    if not found:
        raise FileNotFoundError(
            f"{base}: no trained model family (expected <family>/saved_model.pb for one of "
            f"{', '.join(MODEL_FAMILIES)})"
        )
    return found


def train_step(
    transform_dir: str,
    model_dir: str,
    hparams: Mapping[str, Any],
    families: Sequence[str] = (MLP,),
    gbt_params: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Train and export each of ``families``; returns each one's validation figures, keyed
    ``<family>_<figure>``: those of the early-stopped fit on the split, whose epoch or tree count
    the exported model, refitted on the whole training window, reuses. ``hparams`` are the
    network's, ``gbt_params`` the trees'."""
    from components.transform.transform import TRANSFORM_FN_DIR, load_transformed

    if unknown := sorted(set(families) - set(MODEL_FAMILIES)):
        raise ValueError(f"train: unknown model families {unknown}; known: {MODEL_FAMILIES}")
    splits = load_transformed(transform_dir, "train"), load_transformed(transform_dir, "valid")
    transform_fn = Path(transform_dir) / TRANSFORM_FN_DIR
    trainers = {MLP: _train_mlp, GBT: _train_gbt}
    params = {MLP: hparams, GBT: gbt_params or {}}
    figures: dict[str, float] = {}
    for family in families:
        out = Path(model_dir) / family
        for key, value in trainers[family](splits, transform_fn, out, params[family]).items():
            figures[f"{family}_{key}"] = value
    return figures


def _record(export_dir: Path, params: Any, history: Mapping[str, Any]) -> None:
    path = export_dir / TRAIN_HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hparams": asdict(params), "history": history}))


def _train_mlp(splits, transform_fn: Path, out: Path, hparams: Mapping[str, Any]) -> dict:
    from components.train.trainer import HParams, export_serving_model, refit, train

    hp = HParams(**hparams)
    _, history = train(*splits, hp)
    best = int(np.argmax(history["val_ap"]))
    model = refit(*splits, hp, best + 1)
    export_serving_model(model, transform_fn, out)
    _record(out, hp, history)
    return {
        "best_epoch": float(best + 1),
        "epochs_run": float(len(history["val_ap"])),
        "val_average_precision": history["val_ap"][best],
        "val_auc_roc": history["val_auc"][best],
    }


def _train_gbt(splits, transform_fn: Path, out: Path, gbt_params: Mapping[str, Any]) -> dict:
    from components.train.gbt import GBTParams, refit_gbt, train_gbt, tree_features
    from components.train.trainer import export_serving_model

    params = GBTParams(**gbt_params)
    _, history = train_gbt(*splits, params)
    model = refit_gbt(*splits, params, int(history["num_trees"]))
    export_serving_model(model, transform_fn, out, features=tree_features)
    _record(out, params, history)
    return {
        "num_trees": history["num_trees"],
        "val_average_precision": history["val_ap"],
        "val_auc_roc": history["val_auc"],
    }
