"""Train: a Keras (tf_keras) network on TFT-transformed features; export it with the TFT graph.

Class imbalance is handled with class weights; early stopping watches validation average
precision (PR AUC), and the network is then refitted on the whole training window (both splits)
for the epochs early stopping chose; everything is seeded. The exported SavedModel's ``serving_default`` takes the
contract's model inputs (raw fields + stateful aggregates) and returns the fraud probability.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFT's layer is Keras 2: tf_keras, not Keras 3


@dataclass(frozen=True)
class HParams:
    hidden_units: str = "64,32"
    dropout: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 20
    patience: int = 3
    max_class_weight: float = 20.0
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.units:
            raise ValueError(f"hidden_units {self.hidden_units!r}: give e.g. '64,32'")
        if not 0 <= self.dropout < 1 or self.learning_rate <= 0 or self.epochs < 1:
            raise ValueError(f"invalid hyperparameters: {self}")

    @property
    def units(self) -> list[int]:
        return [int(u) for u in str(self.hidden_units).split(",") if u.strip()]


FEATURES_INPUT = "features"


def _xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One dense matrix in contract order: far cheaper per step than a dict of scalar inputs."""
    x = df[list(c.transformed_feature_names())].to_numpy(dtype=np.float32)
    return x, df[c.LABEL].to_numpy(dtype=np.float32)


def build_model(hp: HParams):
    import tf_keras as keras

    inputs = keras.Input(shape=(len(c.transformed_feature_names()),), name=FEATURES_INPUT)
    x = inputs
    for units in hp.units:
        x = keras.layers.Dense(units, activation="relu")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, seed=hp.seed)(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="fraud")(x)
    model = keras.Model(inputs, out)
    model.compile(
        optimizer=keras.optimizers.Adam(hp.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(curve="PR", name="ap"), keras.metrics.AUC(name="auc")],
    )
    return model


def _class_weight(y: np.ndarray, hp: HParams) -> dict[int, float]:
    pos = float(y.sum())
    if pos == 0:
        raise ValueError("training split has no frauds")
    # Balanced weights would be ~100:1 here; capping keeps the probabilities usable as scores.
    return {0: 1.0, 1: min((len(y) - pos) / pos, hp.max_class_weight)}


def _shuffled(x: np.ndarray, y: np.ndarray, hp: HParams):
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(min(len(y), 200_000), seed=hp.seed, reshuffle_each_iteration=True)
        .batch(hp.batch_size)
        .prefetch(2)
    )


def train(train_df: pd.DataFrame, valid_df: pd.DataFrame, hp: HParams):
    """Fit with class weights and early stopping on validation AP; returns (model, history)."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(hp.seed)
    x, y = _xy(train_df)
    xv, yv = _xy(valid_df)
    class_weight = _class_weight(y, hp)
    valid_ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(8192)
    model = build_model(hp)
    history = model.fit(
        _shuffled(x, y, hp),
        validation_data=valid_ds,
        epochs=hp.epochs,
        class_weight=class_weight,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_ap", mode="max", patience=hp.patience, restore_best_weights=True
            )
        ],
        verbose=2,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def refit(train_df: pd.DataFrame, valid_df: pd.DataFrame, hp: HParams, epochs: int):
    """A fresh network fitted on both splits (the whole training window) for ``epochs`` epochs,
    the count early stopping chose on the split: the latest days, the closest to what is scored
    next, are learnt from too."""
    import tf_keras as keras

    keras.utils.set_random_seed(hp.seed)
    x, y = _xy(pd.concat([train_df, valid_df], ignore_index=True))
    model = build_model(hp)
    model.fit(_shuffled(x, y, hp), epochs=epochs, class_weight=_class_weight(y, hp), verbose=2)
    return model


def stacked_features(transformed):
    """The network's input: the transformed features as one matrix, in contract order."""
    import tensorflow as tf

    names = c.transformed_feature_names()
    return tf.stack([tf.reshape(transformed[n], [-1]) for n in names], axis=1)


def export_serving_model(
    model, transform_fn_dir: str | Path, export_dir: str | Path, features=stacked_features
) -> Path:
    """SavedModel = TFT graph + model; named raw inputs in, fraud probability out.

    ``features`` maps the TFT layer's outputs to what ``model`` takes (``stacked_features`` for
    the network, ``gbt.tree_features`` for the trees).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(os.fspath(transform_fn_dir))
    model.tft_layer = tft_output.transform_features_layer()  # tracked, so its assets are saved
    spec = {
        s.name: tf.TensorSpec([None], tf.string if s.dtype == "string" else tf.float32, name=s.name)
        for s in c.INPUT_SPECS
    }

    @tf.function(input_signature=[spec])
    def serve(inputs):
        prob = model(features(model.tft_layer(inputs)))
        return {c.SCORE_OUTPUT: tf.reshape(prob, [-1])}

    export_dir = Path(export_dir)
    tf.saved_model.save(model, os.fspath(export_dir), signatures={c.SERVING_SIGNATURE: serve})
    return export_dir


@dataclass
class TrainResult:
    history: dict
    best_val_ap: float
    epochs_run: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))
