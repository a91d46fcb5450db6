"""Small, deterministic SavedModels in the TF Serving layout, for tests and demos.

Both builders export with ``tf.saved_model.save`` and a ``serving_default`` signature taking
named 1-D tensors (one value per row) and returning ``{"fraud_probability": ...}``, which is the
shape of what the training pipeline exports. TensorFlow is imported inside the functions, so
importing this module stays cheap.

``python -m serving._example_models KIND DIR --version N`` writes one version directory;
tests call it in a subprocess so the test process itself never has to import TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

# The tiny model's score is sigmoid(AMOUNT_W*amount + TX_W*n_tx_24h + HOUR_W*hour + bias(version)),
# simple enough that tests recompute it in pure Python.
AMOUNT_W = 0.01
TX_W = 0.1
HOUR_W = 0.05
CLASS_LABELS = ("legit", "fraud")


def tiny_bias(version: int) -> float:
    """Each version scores differently, so a test can tell which version answered."""
    return -3.0 + 0.25 * version


def tiny_expected_score(amount: float, n_tx_24h: int, timestamp: str, version: int) -> float:
    """Pure-Python reference of the tiny model (hour = characters 11-12 of an ISO timestamp)."""
    hour = float(int(timestamp[11:13]))
    z = AMOUNT_W * amount + TX_W * n_tx_24h + HOUR_W * hour + tiny_bias(version)
    return 1.0 / (1.0 + math.exp(-z))


def _write_atomically(build: Any, target: Path) -> Path:
    """Export into a hidden sibling dir, then rename: a poller never sees a half-written version."""
    target = Path(target)
    staging = target.parent / f".tmp-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    build(staging)
    staging.rename(target)
    return target


def build_tiny_model(target: Path | str, version: int, warmup_records: int = 0) -> Path:
    """Export the tiny model (float ``amount``, int64 ``n_tx_24h``, string ``timestamp``).

    Signatures: ``serving_default`` (predict), ``classify`` (serialized tf.Example ->
    classes/scores) and ``regress`` (serialized tf.Example -> outputs). With
    ``warmup_records``, also writes TF Serving's ``assets.extra/tf_serving_warmup_requests``.
    """
    import tensorflow as tf
    import tf_keras as keras

    bias = tiny_bias(version)

    def build(path: Path) -> None:
        dense = keras.layers.Dense(1, activation="sigmoid", name="score")
        model = keras.Sequential([keras.Input(shape=(3,), name="features"), dense])
        dense.set_weights(
            [
                tf.constant([[AMOUNT_W], [TX_W], [HOUR_W]], tf.float32).numpy(),
                tf.constant([bias], tf.float32).numpy(),
            ]
        )

        def score(amount: tf.Tensor, n_tx_24h: tf.Tensor, timestamp: tf.Tensor) -> tf.Tensor:
            hour = tf.strings.to_number(tf.strings.substr(timestamp, 11, 2), tf.float32)
            feats = tf.stack([amount, tf.cast(n_tx_24h, tf.float32), hour], axis=1)
            return model(feats)

        module = tf.Module()
        module.model = model

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="amount"),
                tf.TensorSpec([None], tf.int64, name="n_tx_24h"),
                tf.TensorSpec([None], tf.string, name="timestamp"),
            ]
        )
        def serve(
            amount: tf.Tensor, n_tx_24h: tf.Tensor, timestamp: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            return {"fraud_probability": score(amount, n_tx_24h, timestamp)}

        spec = {
            "amount": tf.io.FixedLenFeature([], tf.float32),
            "n_tx_24h": tf.io.FixedLenFeature([], tf.int64),
            "timestamp": tf.io.FixedLenFeature([], tf.string),
        }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            ex = tf.io.parse_example(inputs, spec)
            p = score(ex["amount"], ex["n_tx_24h"], ex["timestamp"])
            n = tf.shape(inputs)[0]
            classes = tf.tile(tf.constant([list(CLASS_LABELS)]), [n, 1])
            return {"classes": classes, "scores": tf.concat([1.0 - p, p], axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            ex = tf.io.parse_example(inputs, spec)
            return {"outputs": score(ex["amount"], ex["n_tx_24h"], ex["timestamp"])}

        module.serve, module.classify, module.regress = serve, classify, regress
        tf.saved_model.save(
            module,
            str(path),
            signatures={
                "serving_default": serve.get_concrete_function(),
                "classify": classify.get_concrete_function(),
                "regress": regress.get_concrete_function(),
            },
        )
        if warmup_records:
            _write_warmup_requests(path, warmup_records)

    return _write_atomically(build, Path(target))


def _write_warmup_requests(path: Path, count: int) -> None:
    """TF Serving's warm-up file: a TFRecord of PredictionLog(predict_log{request}) protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    extra = path / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = "serving_default"
            request.inputs["amount"].CopyFrom(tf.make_tensor_proto([10.0 * (i + 1)], tf.float32))
            request.inputs["n_tx_24h"].CopyFrom(tf.make_tensor_proto([i], tf.int64))
            request.inputs["timestamp"].CopyFrom(
                tf.make_tensor_proto(["2024-05-01T12:00:00Z"], tf.string)
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def build_half_plus_two(target: Path | str) -> Path:
    """TF Serving's test model: ``y = 0.5 * x + 2`` with ``x`` declared float32 ``[-1, 1]``."""
    import tensorflow as tf

    def build(path: Path) -> None:
        module = tf.Module()

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + 2.0}

        module.serve = serve
        tf.saved_model.save(
            module, str(path), signatures={"serving_default": serve.get_concrete_function()}
        )

    return _write_atomically(build, Path(target))


TF1_VOCABULARY = ("a", "b", "c")


def build_tf1_model(target: Path | str) -> Path:
    """A TF1-style SavedModel (``tf.compat.v1`` graph, ``Builder``): ``serving_default`` is
    half_plus_two with the 0.5 in a variable; ``lookup`` maps strings to their line in a
    vocabulary asset (-1 if absent), its table filled by the ``main_op``."""
    import tempfile

    import tensorflow as tf

    v1 = tf.compat.v1

    def build(path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp, tf.Graph().as_default(), v1.Session() as sess:
            vocab = Path(tmp) / "vocab.txt"  # gone after the export: the asset copy must serve
            vocab.write_text("\n".join(TF1_VOCABULARY) + "\n")
            x = v1.placeholder(tf.float32, [None, 1], name="x")
            y = v1.get_variable("w", initializer=0.5) * x + 2.0
            s = v1.placeholder(tf.string, [None], name="s")
            whole_line, line_number = (
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            init = tf.lookup.TextFileInitializer(
                str(vocab), tf.string, whole_line, tf.int64, line_number
            )
            ids = tf.lookup.StaticHashTable(init, -1).lookup(s)
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                sess,
                ["serve"],
                signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
                    "lookup": v1.saved_model.predict_signature_def({"s": s}, {"ids": ids}),
                },
                main_op=v1.tables_initializer(),
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            )
            builder.save()

    return _write_atomically(build, Path(target))


# dtype name -> TF dtype name, for the "tensors" model's identity signatures.
TENSOR_DTYPES = ("float32", "float64", "int32", "int64", "uint64", "bool", "string")


def build_tensors_model(target: Path | str) -> Path:
    """A model to test the JSON encoding of tensors, with one signature per case:

    * ``<dtype>`` for each of :data:`TENSOR_DTYPES`: ``x`` (any shape) -> ``y``, the identity;
    * ``pair``: ``x`` float32 -> ``a`` (x) and ``b`` (2 * x), two named outputs;
    * ``complex``: ``x`` float32 -> ``c`` complex64, a type JSON cannot carry.
    """
    import tensorflow as tf

    def build(path: Path) -> None:
        module = tf.Module()
        signatures = {}
        for name in TENSOR_DTYPES:
            spec = tf.TensorSpec(None, tf.as_dtype(name), name="x")
            signatures[name] = tf.function(lambda x: {"y": tf.identity(x)}, input_signature=[spec])
        f32 = [tf.TensorSpec(None, tf.float32, name="x")]
        signatures["pair"] = tf.function(lambda x: {"a": x, "b": 2.0 * x}, input_signature=f32)
        signatures["complex"] = tf.function(lambda x: {"c": tf.complex(x, x)}, input_signature=f32)
        signatures["serving_default"] = signatures["float32"]
        module.fns = list(signatures.values())
        tf.saved_model.save(
            module,
            str(path),
            signatures={k: f.get_concrete_function() for k, f in signatures.items()},
        )

    return _write_atomically(build, Path(target))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["tiny", "half_plus_two", "tensors", "tf1"])
    parser.add_argument("base_path", type=Path)
    parser.add_argument("--version", type=int, action="append", required=True)
    parser.add_argument(
        "--warmup-version",
        type=int,
        action="append",
        default=[],
        help="tiny versions that ship assets.extra warm-up requests (2 records)",
    )
    args = parser.parse_args(argv)
    written = []
    for version in args.version:
        target = args.base_path / str(version)
        if args.kind == "tiny":
            build_tiny_model(target, version, 2 if version in args.warmup_version else 0)
        elif args.kind == "half_plus_two":
            build_half_plus_two(target)
        elif args.kind == "tensors":
            build_tensors_model(target)
        else:
            build_tf1_model(target)
        written.append(str(target))
    json.dump({"written": written}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
