"""Train the ``gbt`` family: TF-DF gradient-boosted trees on TFT-transformed features.

The trees take one named numerical input per transformed feature (the same features, in the
same contract order, as the network's matrix) and are exported by ``trainer.export_serving_model``
with the TFT graph in front: the SavedModel's ``serving_default`` is the MLP's. The validation
split drives the trees' early stopping, as it drives the network's; the trees are then grown
again on the whole training window (both splits), as many as early stopping kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import contract as c

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TF-DF's models are Keras 2 (tf_keras) models


AXIS_ALIGNED, SPARSE_OBLIQUE = SPLIT_AXES = ("AXIS_ALIGNED", "SPARSE_OBLIQUE")
OBLIQUE_OPTIONS = {
    "sparse_oblique_normalization": "MIN_MAX",
    "sparse_oblique_num_projections_exponent": 1.0,
}


@dataclass(frozen=True)
class GBTParams:
    num_trees: int = 300
    max_depth: int = 6
    shrinkage: float = 0.1
    # Leaves of at least this many training examples: with ~0.8 % fraud, smaller leaves fit a
    # handful of frauds each and early stopping cuts the trees off after a few dozen.
    min_examples: int = 50
    # SPARSE_OBLIQUE splits on weighted sums of a few features (both sides of a ratio at once),
    # with the projection options of TF-DF's benchmark_rank1 template (OBLIQUE_OPTIONS).
    split_axis: str = AXIS_ALIGNED
    seed: int = 42

    def __post_init__(self) -> None:
        if (
            self.num_trees < 1
            or self.max_depth < 1
            or not 0 < self.shrinkage <= 1
            or self.min_examples < 1
            or self.split_axis not in SPLIT_AXES
        ):
            raise ValueError(
                f"invalid gradient-boosted trees parameters: {self} (num_trees >= 1, "
                "max_depth >= 1, 0 < shrinkage <= 1, min_examples >= 1, split_axis one of "
                f"{', '.join(SPLIT_AXES)})"
            )


def tree_features(transformed) -> dict:
    """The trees' inputs: each transformed feature as a 1-D tensor under its contract name."""
    import tensorflow as tf

    return {n: tf.reshape(transformed[n], [-1]) for n in c.transformed_feature_names()}


def _dataset(df: pd.DataFrame):
    import tensorflow as tf

    names = c.transformed_feature_names()
    features = {n: df[n].to_numpy(dtype=np.float32) for n in names}
    labels = df[c.LABEL].to_numpy(dtype=np.float32)
    # One large batch per pass: TF-DF reads the whole dataset once, batching only costs steps.
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(65_536)


def gbt_model(params: GBTParams, **options):
    """The TF-DF model ``params`` describe, unfitted (``options``: further TF-DF arguments)."""
    import tensorflow_decision_forests as tfdf

    oblique = OBLIQUE_OPTIONS if params.split_axis == SPARSE_OBLIQUE else {}
    return tfdf.keras.GradientBoostedTreesModel(
        task=tfdf.keras.Task.CLASSIFICATION,
        max_depth=params.max_depth,
        shrinkage=params.shrinkage,
        min_examples=params.min_examples,
        split_axis=params.split_axis,
        random_seed=params.seed,
        verbose=0,
        **{"num_trees": params.num_trees, **oblique, **options},
    )


def train_gbt(train_df: pd.DataFrame, valid_df: pd.DataFrame, params: GBTParams):
    """Fit; returns (model, {"val_ap": ..., "val_auc": ..., "num_trees": ...})."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not train_df[c.LABEL].any():
        raise ValueError("training split has no frauds")
    model = gbt_model(params)
    model.fit(_dataset(train_df), validation_data=_dataset(valid_df), verbose=0)
    scores = model.predict(_dataset(valid_df), verbose=0).reshape(-1)
    y = valid_df[c.LABEL].to_numpy()
    return model, {
        "val_ap": float(average_precision_score(y, scores)),
        "val_auc": float(roc_auc_score(y, scores)),
        "num_trees": float(model.make_inspector().num_trees()),
    }


def refit_gbt(train_df: pd.DataFrame, valid_df: pd.DataFrame, params: GBTParams, num_trees: int):
    """``num_trees`` trees (the count early stopping kept) grown on both splits, the whole
    training window, with nothing held out."""
    model = gbt_model(params, num_trees=num_trees, validation_ratio=0.0, early_stopping="NONE")
    model.fit(_dataset(pd.concat([train_df, valid_df], ignore_index=True)), verbose=0)
    return model
