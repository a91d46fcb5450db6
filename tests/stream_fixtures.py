"""Fixtures and helpers of the streaming tests: a real broker, a real model server, a real model.

* ``build_fraud_model``: a small tf_keras functional model over ``contract.MODEL_INPUTS`` that
  applies ``contract.derived_features`` and one Dense sigmoid layer with seeded weights, exported
  with ``tf.saved_model.save`` and a ``serving_default`` tf.function, plus
  ``assets.extra/fraud_metadata.json``, i.e. the shape of what the training pipeline pushes.
  Building imports TensorFlow, so it runs once in a subprocess and is cached on disk by a hash of
  its inputs (``python tests/stream_fixtures.py build-models DIR``).
* pytest fixtures (module scoped, import them into a test module): ``broker`` (Tansu on a free
  loopback port), ``model_base`` + ``model_server`` (``python -m serving.model_server``).
* helpers to make per-test topics, read a topic completely, and compute reference features.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core import contract as c
from core.metadata import ModelMetadata, Thresholds, input_specs
from core.settings import Topics

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "fraud"
LABEL_DELAY_DAYS = c.DEFAULT_LABEL_DELAY_DAYS
# Per version: (bias of the Dense layer, review threshold, block threshold). Version 2 scores
# higher and decides with other thresholds, so a test can tell which version answered.
VERSIONS: dict[int, tuple[float, float, float]] = {1: (-1.0, 0.05, 0.12), 2: (-0.5, 0.08, 0.2)}
WEIGHT_SEED = 20_251_128


# --- the model ---------------------------------------------------------------------------------


def model_weights(n_inputs: int) -> np.ndarray:
    """Seeded Dense weights: a mild random mix of every transformed feature."""
    rng = np.random.default_rng(WEIGHT_SEED)
    return rng.normal(0.0, 0.35, size=(n_inputs, 1)).astype("float32")


def metadata(version: int) -> ModelMetadata:
    _, review, block = VERSIONS[version]
    return ModelMetadata(
        model_name=MODEL_NAME,
        version=version,
        created_at="2025-01-01T00:00:00Z",
        data_version="stream-tests",
        label_delay_days=LABEL_DELAY_DAYS,
        thresholds=Thresholds(review, block),
        feature_inputs=input_specs(),
    )


def build_fraud_model(version_dir: Path, version: int) -> Path:
    """Export one version into ``version_dir`` (imports TensorFlow)."""
    import tensorflow as tf
    import tf_keras as keras

    def dtype(name: str) -> Any:
        return tf.string if name == c.TIMESTAMP else tf.float32

    inputs = {n: keras.Input(shape=(), dtype=dtype(n), name=n) for n in c.MODEL_INPUTS}
    derived = c.derived_features(inputs)
    stacked = tf.stack([derived[n] for n in c.transformed_feature_names()], axis=1)
    dense = keras.layers.Dense(1, activation="sigmoid", name="score")
    score = tf.reshape(dense(stacked), [-1])
    model = keras.Model(inputs=inputs, outputs={c.SCORE_OUTPUT: score})
    bias = VERSIONS[version][0]
    dense.set_weights(
        [model_weights(len(c.transformed_feature_names())), np.array([bias], "float32")]
    )
    spec = {n: tf.TensorSpec([None], dtype(n), name=n) for n in c.MODEL_INPUTS}

    @tf.function(input_signature=[spec])
    def serve(features: dict[str, Any]) -> dict[str, Any]:
        return model(features)

    module = tf.Module()
    module.model = model
    module.serve = serve
    staging = version_dir.parent / f".tmp-{version_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(
        module, str(staging), signatures={c.SERVING_SIGNATURE: serve.get_concrete_function()}
    )
    staging.rename(version_dir)
    return version_dir


def _cache_key() -> str:
    """Hash of what the built graphs depend on (the metadata is written at install time)."""
    import inspect

    digest = hashlib.sha256((REPO / "core" / "contract.py").read_bytes())
    for fn in (build_fraud_model, model_weights):
        digest.update(inspect.getsource(fn).encode())
    digest.update(repr((WEIGHT_SEED, {v: b for v, (b, _, _) in VERSIONS.items()})).encode())
    return digest.hexdigest()[:16]


def model_store() -> Path:
    """Directory with every version of ``VERSIONS`` built (cached across test sessions)."""
    store = Path(tempfile.gettempdir()) / f"fraud-stream-test-models-{_cache_key()}"
    if all((store / str(v) / "saved_model.pb").exists() for v in VERSIONS):
        return store
    from serving._launch import child_env

    store.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "build-models", str(store)],
        cwd=REPO,
        env=child_env(),
        check=True,
        timeout=600,
    )
    return store


def install_version(store: Path, base_path: Path, version: int) -> Path:
    """Copy a built version with its metadata file under ``base_path`` atomically (the
    server polls the directory)."""
    target = base_path / str(version)
    staging = base_path / f".tmp-{version}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(store / str(version), staging)
    metadata(version).write(staging)
    staging.rename(target)
    return target


# --- services --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[Any]:
    from streaming.broker import EmbeddedBroker

    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    base.mkdir()
    install_version(model_store(), base, 1)
    return base


@pytest.fixture(scope="module")
def model_server(model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_model_server(model_base, tmp_path_factory.mktemp("model-server"))
    yield server
    server.stop()


def start_model_server(base: Path, log_dir: Path, port: int | None = None) -> Any:
    from serving._launch import ServerProcess
    from serving.client import ModelClient

    server = ServerProcess(
        [
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
        ],
        port=port,
        log_path=log_dir / "server.log",
    )
    server.start(ready_timeout_s=300)
    ModelClient(server.url, MODEL_NAME).wait_until_available(timeout_s=120)
    return server


# --- topics and data ---------------------------------------------------------------------------


def make_topics(bootstrap: str, prefix: str | None = None, partitions: int = 3) -> Topics:
    """A fresh set of topics (unique names) so tests can share one broker."""
    from streaming.broker import create_topics

    prefix = prefix or uuid.uuid4().hex[:8]
    base = Topics()
    topics = Topics(
        **{name: f"{prefix}-{value}" for name, value in vars(base).items()}  # type: ignore[arg-type]
    )
    create_topics(bootstrap, topics, partitions=partitions)
    return topics


def outputs_of(topics: Topics, suffix: str, bootstrap: str, partitions: int = 3) -> Topics:
    """Same inputs, separate output topics (decisions, alerts, dead letters)."""
    from streaming.broker import create_topics

    out = replace(
        topics,
        decisions=f"{topics.decisions}-{suffix}",
        alerts=f"{topics.alerts}-{suffix}",
        dead_letter=f"{topics.dead_letter}-{suffix}",
    )
    create_topics(bootstrap, out, partitions=partitions)
    return out


def topic_env(topics: Topics) -> dict[str, str]:
    """FRAUD_TOPIC_* variables that make a CLI subprocess use ``topics``."""
    return {f"FRAUD_TOPIC_{name.upper()}": value for name, value in vars(topics).items()}


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int | None = None,
    timeout_s: float = 60.0,
    idle_s: float = 1.5,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` as {"key", "value" (decoded JSON), "timestamp_ms", ...}.

    Stops when ``expect`` messages were read and nothing more arrived for ``idle_s``, or (without
    ``expect``) after ``idle_s`` of silence; fails after ``timeout_s``.
    """
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=200, max_records=10_000)
            for tp, msgs in batch.items():
                for msg in msgs:
                    out.append(
                        {
                            "key": msg.key,
                            "value": orjson.loads(msg.value),
                            "raw": msg.value,
                            "timestamp_ms": msg.timestamp,
                            "partition": tp.partition,
                            "offset": msg.offset,
                        }
                    )
            if batch:
                last = time.monotonic()
            idle = time.monotonic() - last >= idle_s
            if idle and (expect is None or len(out) >= expect):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"read {len(out)} messages from {topic}, expected {expect} within {timeout_s} s"
                )
    finally:
        consumer.close(autocommit=False)


def simulated(n_customers: int, n_days: int, seed: int = 5) -> pd.DataFrame:
    """A small simulated dataset in stream order (with label_available_at)."""
    from core.simulator import SimulationConfig, simulate

    return simulate(
        SimulationConfig(
            n_customers=n_customers,
            n_terminals=2 * n_customers,
            n_days=n_days,
            seed=seed,
            label_delay_days=LABEL_DELAY_DAYS,
        )
    )


def write_dataset(df: pd.DataFrame, path: Path) -> Path:
    from core.dataio import write_transactions

    return write_transactions(df, path)


def reference_stream_features(df: pd.DataFrame, partitions: int = 3) -> pd.DataFrame:
    """Features of one uninterrupted streaming run, computed without Kafka: transactions are
    split by Kafka's default key partitioning (murmur2 of customer_id), each partition has its
    own engine that applies every label once its own event time reaches label_available_at.

    Bit-exact with the consumer: the engines' eviction (and so the rounding of the running
    sums) happens at the same transactions.
    """
    from kafka.partitioner.default import murmur2

    from core.features.batch import epoch_seconds
    from core.features.stream import StreamingFeatureEngine

    ts = epoch_seconds(df[c.TIMESTAMP]).tolist()
    avail = epoch_seconds(df[c.LABEL_AVAILABLE_AT])
    order = np.argsort(avail, kind="stable").tolist()
    avail_sorted = avail[order].tolist()
    engines = [StreamingFeatureEngine(LABEL_DELAY_DAYS) for _ in range(partitions)]
    applied = [0] * partitions  # labels (in availability order) each engine has
    term, cust = df[c.TERMINAL_ID].tolist(), df[c.CUSTOMER_ID].tolist()
    amount, label = df[c.AMOUNT].tolist(), df[c.LABEL].tolist()
    rows = []
    for i in range(len(df)):
        p = (murmur2(cust[i].encode()) & 0x7FFFFFFF) % partitions
        engine, j = engines[p], applied[p]
        while j < len(order) and avail_sorted[j] <= ts[i]:
            k = order[j]
            engine.add_label(term[k], ts[k], int(label[k]))
            j += 1
        applied[p] = j
        rows.append(engine.update(cust[i], term[i], ts[i], amount[i]))
    return pd.DataFrame(rows, index=df[c.TRANSACTION_ID].to_numpy())[list(c.STATEFUL_FEATURES)]


def decision_features(decisions: list[dict[str, Any]]) -> pd.DataFrame:
    """Features carried by decisions (``--include-features``), one row per transaction id (the
    first decision of a duplicated transaction)."""
    from streaming.messages import DecisionFields

    seen: dict[str, dict[str, float]] = {}
    for d in decisions:
        value = d["value"]
        seen.setdefault(value[c.TRANSACTION_ID], value[DecisionFields.FEATURES])
    frame = pd.DataFrame.from_dict(seen, orient="index")
    return frame[list(c.STATEFUL_FEATURES)]


def consume(
    bootstrap: str,
    topics: Topics,
    server: Any,
    base: Path,
    state_dir: Path,
    metrics: Any = None,
    **overrides: Any,
) -> Any:
    """Run the scoring consumer in this process until it is idle (or ``max_messages``)."""
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=overrides.pop("group_id", f"g-{topics.transactions}"),
        topics=topics,
        state_dir=state_dir,
        include_features=True,
        exit_when_idle_s=overrides.pop("exit_when_idle_s", 3.0),
        fsync_snapshots=False,
        **overrides,
    )
    scorer = Scorer(build_model_client(server.url, MODEL_NAME), ThresholdStore(base))
    return StreamConsumer(config, scorer, metrics).run()


def wait_for(
    predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2, quiet: bool = False
) -> Any:
    """Poll until ``predicate()`` is truthy; fail after ``timeout_s`` (or return False when
    ``quiet``, so the caller can report what is missing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    if quiet:
        return False
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def consumer_command(
    bootstrap: str,
    serving_url: str,
    model_base: Path,
    state_dir: Path,
    group_id: str,
    *extra: str,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app.stream_cli",
        "stream",
        "consume",
        "--bootstrap-servers",
        bootstrap,
        "--serving-url",
        serving_url,
        "--model-name",
        MODEL_NAME,
        "--model-base-path",
        str(model_base),
        "--group-id",
        group_id,
        "--state-dir",
        str(state_dir),
        "--include-features",
        *extra,
    ]


def child_env(topics: Topics) -> dict[str, str]:
    from serving._launch import child_env as serving_child_env

    return serving_child_env(topic_env(topics))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "build-models":
        print("usage: stream_fixtures.py build-models DIR", file=sys.stderr)
        return 2
    store = Path(argv[1])
    store.mkdir(parents=True, exist_ok=True)
    for version in VERSIONS:
        if not (store / str(version) / "saved_model.pb").exists():
            shutil.rmtree(store / str(version), ignore_errors=True)
            build_fraud_model(store / str(version), version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
