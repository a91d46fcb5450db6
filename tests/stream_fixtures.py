"""Shared fixtures and helpers of the tests on real parts: tiny models, a broker, a model server.

Registered for every test module by ``pytest_plugins`` in tests/conftest.py: test modules name
the fixtures as arguments and import only helpers from here.

* The tiny models, built by one subprocess (``python tests/stream_fixtures.py build-models DIR``,
  so no test process imports TensorFlow) and cached on disk by a hash of their inputs, exported
  with ``tf.saved_model.save`` and a ``serving_default`` signature:
  - ``fraud`` (``build_fraud_model``): a tf_keras functional model over ``contract.MODEL_INPUTS``
    that applies ``contract.derived_features`` and one Dense sigmoid layer with seeded weights,
    installed with ``assets.extra/fraud_metadata.json``, i.e. the shape of what the training
    pipeline pushes;
  - ``example``: ``serving._example_models``' tiny model (predict, classify and regress
    signatures; ``WARMUP_VERSION`` ships TF Serving warm-up requests), for the TF Serving API
    tests.
  Delete ``fraud-test-models-*`` under the temp dir to force a rebuild.
* pytest fixtures: ``model_store`` (session scoped), ``broker`` (Tansu on a free loopback port),
  ``model_base`` + ``model_server`` (``python -m serving.model_server``), module scoped.
* helpers to install model versions, make per-test topics, read a topic completely, compute
  reference features, run the consumer, and wait for a condition.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

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
EXAMPLE_VERSIONS = (1, 2, 3)
WARMUP_VERSION = 3  # ships assets.extra/tf_serving_warmup_requests (2 predict records)


# --- the models ------------------------------------------------------------------------------


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
    tf.saved_model.save(
        module, str(version_dir), signatures={c.SERVING_SIGNATURE: serve.get_concrete_function()}
    )
    return version_dir


def build_models(store: Path) -> None:
    """Export every fraud version and every example version under ``store`` (imports
    TensorFlow)."""
    from serving._example_models import build_tiny_model

    models = ModelStore(store)
    for version in VERSIONS:
        build_fraud_model(models.fraud / str(version), version)
    for version in EXAMPLE_VERSIONS:
        warmup_records = 2 if version == WARMUP_VERSION else 0
        build_tiny_model(models.example / str(version), version, warmup_records)


def _cache_key() -> str:
    """Hash of what the built graphs depend on (the metadata is written at install time)."""
    import inspect

    from serving import _example_models

    digest = hashlib.sha256((REPO / "core" / "contract.py").read_bytes())
    digest.update(Path(_example_models.__file__).read_bytes())
    digest.update(importlib.metadata.version("tensorflow").encode())
    for fn in (build_models, build_fraud_model, model_weights):
        digest.update(inspect.getsource(fn).encode())
    biases = {v: b for v, (b, _, _) in VERSIONS.items()}
    digest.update(repr((WEIGHT_SEED, biases, EXAMPLE_VERSIONS, WARMUP_VERSION)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelStore:
    """The built tiny models: ``<kind>/<version>/`` directories, to copy with
    ``install_version``."""

    root: Path

    @property
    def fraud(self) -> Path:
        return self.root / "fraud"

    @property
    def example(self) -> Path:
        return self.root / "example"

    def complete(self) -> bool:
        fraud = [self.fraud / str(v) for v in VERSIONS]
        example = [self.example / str(v) for v in EXAMPLE_VERSIONS]
        return all((d / "saved_model.pb").exists() for d in fraud + example)


def build_model_store() -> ModelStore:
    """Every tiny model, built once and then cached across test sessions. The store is built
    in a staging directory and renamed into place, so concurrent sessions never see a partial
    one."""
    from serving._launch import child_env as serving_child_env

    uid = os.getuid() if hasattr(os, "getuid") else 0
    store = ModelStore(Path(tempfile.gettempdir()) / f"fraud-test-models-{uid}-{_cache_key()}")
    if store.complete():
        return store
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=store.root.parent))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "build-models", str(staging)],
        cwd=REPO,
        env=serving_child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"building the test models failed:\n{done.stdout}\n{done.stderr}")
    try:
        staging.rename(store.root)
    except OSError:  # a concurrent session finished first; its store is equivalent
        shutil.rmtree(staging, ignore_errors=True)
    return store


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    return build_model_store()


def install_version(
    source: Path, base_path: Path, version: int, *, with_metadata: bool = False
) -> Path:
    """Copy ``source/<version>`` to ``base_path/<version>`` the safe way (hidden directory, then
    rename: the server polls ``base_path``); ``with_metadata`` adds the fraud model's
    ``fraud_metadata.json``."""
    target = base_path / str(version)
    staging = base_path / f".tmp-{version}-{uuid.uuid4().hex[:6]}"
    base_path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / str(version), staging)
    if with_metadata:
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
def model_base(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    install_version(model_store.fraud, base, 1, with_metadata=True)
    return base


@pytest.fixture(scope="module")
def model_server(model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_model_server(model_base, tmp_path_factory.mktemp("model-server"))
    yield server
    server.stop()


def start_model_server(base: Path, log_dir: Path) -> Any:
    """A model server subprocess serving ``base`` as ``MODEL_NAME``, once the model answers."""
    from serving._launch import ServerProcess

    server = ServerProcess(
        [
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
        ],
        log_path=log_dir / "server.log",
    )
    return start_serving(server)


def start_serving(server: Any) -> Any:
    """Start ``server`` (a stopped one comes back on its port) and wait until the model answers."""
    from serving.client import ModelClient

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
            engine.add_label(term[k], cust[k], ts[k], int(label[k]))
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
    label: str | None = None,
    **overrides: Any,
) -> Any:
    """Run the scoring consumer in this process until it is idle (or ``max_messages``);
    ``label``: decide with the version the server labels so (streaming.scoring.LabelOrLatest)."""
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
    scorer = Scorer(build_model_client(server.url, MODEL_NAME, label=label), ThresholdStore(base))
    return StreamConsumer(config, scorer, metrics).run()


# What a predicate may raise while a server (re)starts or reloads: polled again, not a failure.
TRANSIENT_ERRORS = (requests.RequestException, KeyError, ValueError)


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 30.0,
    what: str = "condition",
    poll_s: float = 0.1,
    quiet: bool = False,
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout_s`` naming
    ``what`` and the last transient error (or return False when ``quiet``, so the caller can
    report what is missing)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except TRANSIENT_ERRORS as err:
            last_error = err
        else:
            if value:
                return value
        time.sleep(poll_s)
    if quiet:
        return False
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what} (last error: {last_error})"
    )


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
    build_models(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
