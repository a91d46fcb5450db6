"""The train step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np


def train_step(transform_dir: str, model_dir: str, hparams: dict) -> dict[str, float]:
    from components.train.trainer import HParams, export_serving_model, train
    from components.transform.transform import TRANSFORM_FN_DIR, load_transformed

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
