"""Fast tests of the streaming layer's parts (no broker, no model server)."""

from __future__ import annotations

import base64
import json
import pathlib
import pickle
import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from stream_fixtures import reference_stream_features, simulated

from core import contract as c
from core.dataio import validate_frame
from core.features.batch import epoch_seconds as batch_epoch_seconds
from core.features.stream import StreamingFeatureEngine
from core.metadata import METADATA_FILE
from core.statefile import StateFileError
from streaming import messages as m
from streaming import state as st
from streaming.dataset import ConsumedDataset, load_consumed
from streaming.kafka_config import KafkaSecurity, client_config
from streaming.metrics import PREFIX, StreamMetrics
from streaming.scoring import ModelThresholds, Scorer, ScoringUnavailable, ThresholdStore
from streaming.state import LabelRouter, PartitionState, RecentIds, SnapshotStore


def _tx(**overrides: object) -> dict:
    row = {
        c.TRANSACTION_ID: "T1",
        c.TIMESTAMP: "2025-03-01T10:00:00Z",
        c.CUSTOMER_ID: "C1",
        c.TERMINAL_ID: "M1",
        c.AMOUNT: 12.5,
    }
    row.update(overrides)
    return row


# --- messages ----------------------------------------------------------------------------------


def test_parse_rejects_structural_problems() -> None:
    assert m.parse_transaction(b"{not json").kind == m.MALFORMED_JSON
    assert m.parse_transaction(b"[1, 2]").kind == m.NOT_AN_OBJECT
    missing = {k: v for k, v in _tx().items() if k != c.AMOUNT}
    rejected = m.parse_transaction(orjson.dumps(missing))
    assert rejected.kind == m.MISSING_FIELD and c.AMOUNT in rejected.reason
    assert m.parse_transaction(m.transaction_message(_tx())) == _tx()


def test_validate_batch_matches_dataio_rules() -> None:
    rows = [
        _tx(),
        _tx(**{c.TRANSACTION_ID: "T2", c.AMOUNT: -3.0}),
        _tx(**{c.TRANSACTION_ID: "T3", c.TIMESTAMP: "yesterday"}),
        _tx(**{c.TRANSACTION_ID: "T4", c.CUSTOMER_ID: "  "}),
        _tx(**{c.TRANSACTION_ID: "T1"}),  # duplicate of the first
        # Valid but not canonical: decided by validate_frame, normalised to the canonical form.
        _tx(**{c.TRANSACTION_ID: "T5", c.TIMESTAMP: "2025-03-01 11:00:00+01:00", c.AMOUNT: "7"}),
        _tx(**{c.TRANSACTION_ID: "T6", c.TIMESTAMP: "2025-02-30T10:00:00Z"}),
    ]
    valid, rejected = m.validate_batch(rows)
    assert [tx is not None for tx in valid] == [True, False, False, False, False, True, False]
    assert "negative amount" in rejected[1].reason and rejected[1].reason.startswith(c.AMOUNT)
    assert rejected[2].reason.startswith(c.TIMESTAMP)
    assert rejected[3].reason.startswith(c.CUSTOMER_ID)
    assert "duplicate id 'T1'" in rejected[4].reason
    assert rejected[6].reason.startswith(c.TIMESTAMP)
    t5 = valid[5]
    assert t5 is not None
    assert t5.row[c.TIMESTAMP] == "2025-03-01T10:00:00Z" and t5.row[c.AMOUNT] == 7.0
    assert t5.epoch == 1740823200
    # The same verdicts as validate_frame on the same rows (the rules of a raw file).
    frame = pd.DataFrame(rows)
    _, errors = validate_frame(frame, Path("x.parquet"), require_label=False)
    assert {e.row - 1 for e in errors} == set(rejected)


def test_fast_path_agrees_with_validate_frame_on_simulated_rows() -> None:
    df = simulated(30, 5).head(300)
    rows = [orjson.loads(m.transaction_message(r)) for r in df.to_dict("records")]
    valid, rejected = m.validate_batch(rows)
    assert not rejected
    expected = batch_epoch_seconds(df[c.TIMESTAMP]).tolist()
    assert [tx.epoch for tx in valid] == expected  # type: ignore[union-attr]


def test_epoch_seconds_and_labels() -> None:
    assert m.epoch_seconds("2024-02-29T23:59:59Z") == 1709251199
    assert m.epoch_seconds("2024-02-29T23:59:59") == 1709251199  # no zone = UTC
    with pytest.raises(ValueError):
        m.epoch_seconds("2025-02-30T00:00:00Z")
    label = {
        c.TRANSACTION_ID: "T1",
        c.TERMINAL_ID: "M1",
        c.CUSTOMER_ID: "C1",
        c.TIMESTAMP: "2025-03-01T10:00:00Z",
        c.LABEL: 1,
        c.LABEL_AVAILABLE_AT: "2025-03-08T10:00:00Z",
    }
    parsed = m.parse_label(m.label_message(label))
    assert isinstance(parsed, m.Label)
    assert parsed.available_at - parsed.tx_ts == 7 * c.SECONDS_PER_DAY
    assert m.parse_label(orjson.dumps({**label, c.LABEL: 2})).kind == m.INVALID_VALUE
    assert m.parse_label(orjson.dumps({**label, c.LABEL: True})).kind == m.INVALID_VALUE


def test_dead_letter_carries_the_original_bytes() -> None:
    raw = b'{"broken": '
    out = orjson.loads(
        m.dead_letter(
            m.Rejected(m.MALFORMED_JSON, "bad"),
            topic="tx",
            partition=2,
            offset=41,
            timestamp_ms=1,
            key=b"C1",
            value=raw,
            group_id="g",
        )
    )
    f = m.DeadLetterFields
    assert base64.b64decode(out[f.VALUE_B64]) == raw
    assert (out[f.SOURCE_TOPIC], out[f.SOURCE_PARTITION], out[f.SOURCE_OFFSET]) == ("tx", 2, 41)
    assert out[f.REASON_KIND] == m.MALFORMED_JSON


# --- label routing and snapshots ---------------------------------------------------------------


def _labels_of(df: pd.DataFrame) -> list[m.Label]:
    ts = batch_epoch_seconds(df[c.TIMESTAMP])
    avail = batch_epoch_seconds(df[c.LABEL_AVAILABLE_AT])
    return [
        m.Label(
            r[c.TRANSACTION_ID],
            r[c.TERMINAL_ID],
            r[c.CUSTOMER_ID],
            int(t),
            int(r[c.LABEL]),
            int(a),
            "",
            "",
        )  # fmt: skip
        for r, t, a in zip(df.to_dict("records"), ts, avail, strict=True)
    ]


def _run_partition(
    df: pd.DataFrame, state: PartitionState, router: LabelRouter, labels_at: dict[int, list]
) -> dict[str, dict[str, float]]:
    """Process rows in stream order; ``labels_at[i]`` are delivered just before row i."""
    ts = batch_epoch_seconds(df[c.TIMESTAMP])
    out = {}
    for i, r in enumerate(df.to_dict("records")):
        for offset, label in labels_at.get(i, []):
            router.deliver(0, offset, label)
        state.advance_to(int(ts[i]))
        out[r[c.TRANSACTION_ID]] = state.engine.update(
            r[c.CUSTOMER_ID], r[c.TERMINAL_ID], int(ts[i]), r[c.AMOUNT]
        )
        state.next_offset = i + 1
    return out


def _assert_reference_features(got: dict[str, dict[str, float]], df: pd.DataFrame) -> None:
    ref = reference_stream_features(df, partitions=1)
    mine = pd.DataFrame.from_dict(got, orient="index").loc[ref.index][list(c.STATEFUL_FEATURES)]
    pd.testing.assert_frame_equal(mine, ref)


def test_router_gates_labels_by_availability_even_when_they_arrive_early() -> None:
    df = simulated(120, 20).head(3000)
    labels = _labels_of(df)
    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, StreamingFeatureEngine())
    # Every label arrives at the very start, long before it is available.
    got = _run_partition(df, state, router, {0: list(enumerate(labels))})
    _assert_reference_features(got, df)


def test_early_labels_in_any_arrival_order_give_the_same_features() -> None:
    df = simulated(120, 20).head(3000)
    labels = _labels_of(df)
    order = np.random.default_rng(5).permutation(len(labels))
    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, StreamingFeatureEngine())
    got = _run_partition(df, state, router, {0: [(int(k), labels[int(k)]) for k in order]})
    _assert_reference_features(got, df)


def test_pending_labels_are_applied_in_availability_then_arrival_order() -> None:
    applied: list[str] = []

    class Recorder(StreamingFeatureEngine):
        def add_label(self, terminal_id: str, customer_id: str, tx_ts: int, is_fraud: int) -> None:
            applied.append(terminal_id)

    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, Recorder())
    arrivals = [(0, 10), (1, 20), (0, 15), (1, 20), (2, 30), (0, 5), (2, 25), (1, 30), (0, 40)]
    for i, (label_partition, available) in enumerate(arrivals):
        router.deliver(label_partition, i, m.Label(f"x{i}", f"t{i}", "c", 0, 0, available, "", ""))
    state.advance_to(20)
    assert applied == ["t5", "t0", "t2", "t1", "t3"]
    state.advance_to(29)
    assert applied[5:] == ["t6"]
    state.advance_to(40)
    assert applied[6:] == ["t4", "t7", "t8"]
    state.advance_to(41)
    assert len(applied) == 9


def test_labels_over_several_partitions_give_the_reference_features() -> None:
    df = simulated(120, 20).head(3000)
    labels = _labels_of(df)
    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, StreamingFeatureEngine())
    by_avail = sorted(range(len(labels)), key=lambda k: labels[k].available_at)
    # Three labels partitions, each in availability order, read one partition after the other
    # as a poll returns them: all before the first transaction.
    for label_partition in range(3):
        for offset, k in enumerate(by_avail[label_partition::3]):
            router.deliver(label_partition, offset, labels[k])
    _assert_reference_features(_run_partition(df, state, router, {}), df)


def test_snapshot_restore_resumes_exactly(tmp_path: Path) -> None:
    df = simulated(120, 20).head(3000)
    labels = _labels_of(df)
    ts = batch_epoch_seconds(df[c.TIMESTAMP])
    avail = np.array([lab.available_at for lab in labels])
    # Labels arrive (in label-offset order) right before the first transaction that may use them.
    order = np.argsort(avail, kind="stable")
    due = np.searchsorted(ts, avail[order], side="left")
    labels_at: dict[int, list] = {}
    for offset, (k, i) in enumerate(zip(order, due, strict=True)):
        labels_at.setdefault(int(min(i, len(df) - 1)), []).append((offset, labels[int(k)]))
    cut = 1700
    first = {i: v for i, v in labels_at.items() if i < cut}
    rest = {i - cut: v for i, v in labels_at.items() if i >= cut}

    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, StreamingFeatureEngine())
    before = _run_partition(df.iloc[:cut], state, router, first)
    store = SnapshotStore(tmp_path)
    delivered = sum(len(v) for v in first.values())
    store.save("tx", state, {0: delivered})
    assert not list(tmp_path.glob("snapshots/.*tmp"))  # written atomically, nothing left over

    restored, snap = store.restore("tx", 0, c.DEFAULT_LABEL_DELAY_DAYS)
    assert snap is not None and snap.next_offset == cut
    router2 = LabelRouter()
    router2.partitions[0] = restored
    # A restart re-reads the whole labels topic before going on.
    replayed = {0: [lv for i in sorted(first) for lv in first[i]]}
    for i, v in rest.items():
        replayed.setdefault(i, []).extend(v)
    after = _run_partition(df.iloc[cut:].reset_index(drop=True), restored, router2, replayed)
    got = pd.DataFrame.from_dict({**before, **after}, orient="index")
    ref = reference_stream_features(df, partitions=1)
    pd.testing.assert_frame_equal(got.loc[ref.index][list(c.STATEFUL_FEATURES)], ref)


def test_snapshot_rejects_other_label_delay_and_corruption(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, fsync=False)
    state = PartitionState(1, StreamingFeatureEngine(3), next_offset=5, last_ts=10)
    store.save("tx", state, {})
    with pytest.raises(ValueError, match="label delay"):
        store.restore("tx", 1, 7)
    path = store.path("tx", 1)
    doc = orjson.loads(path.read_bytes())
    refused = {
        "fraud-partition-snapshot version 1, this release reads version 2 only": {"version": 1},
        "format 'fraud-feature-engine-state', expected 'fraud-partition-snapshot'": {
            "format": "fraud-feature-engine-state"
        },
        "malformed fraud-partition-snapshot document (KeyError('last_log_ms'))": {
            "last_log_ms": None
        },
        "engine: fraud-feature-engine-state version 1": {"engine": {**doc["engine"], "version": 1}},
        "recent ids: an id appears twice": {
            "recent_ids": {"ids": ["T1", "T1"], "digests": ["a", "b"]}
        },
    }
    for message, change in refused.items():
        changed = {**doc, **change}
        if change.get("last_log_ms", 0) is None:
            del changed["last_log_ms"]
        path.write_bytes(orjson.dumps(changed))
        with pytest.raises(
            StateFileError, match=f"^{re.escape(str(path))}: .*{re.escape(message)}"
        ):
            store.restore("tx", 1, 3)
    path.write_bytes(b'{"format": "fraud-partition-snapshot", "version": 2, "topic"')
    with pytest.raises(StateFileError, match="not a fraud-partition-snapshot document"):
        store.load("tx", 1)
    assert store.restore("tx", 2, 7)[1] is None


class _Touch:
    """Unpickling this creates ``path``: proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.path,)


def test_a_pickle_in_place_of_a_snapshot_is_refused_unread(tmp_path: Path) -> None:
    proof = tmp_path / "unpickling-runs-code"
    pickle.loads(pickle.dumps(_Touch(proof)))
    assert proof.exists()  # the payload works: the checks below can fail

    marker = tmp_path / "marker"
    evil = pickle.dumps(_Touch(marker), protocol=pickle.HIGHEST_PROTOCOL)
    store = SnapshotStore(tmp_path, fsync=False)
    store.dir.mkdir(parents=True)
    store.path("tx", 0).write_bytes(evil)
    expected = (
        f"{store.path('tx', 0)}: a pickle (written by an older release), not a "
        "fraud-partition-snapshot document; it is not read, since unpickling can run code: move "
        "it away"
    )
    with pytest.raises(StateFileError, match=re.escape(expected)):
        store.restore("tx", 0, c.DEFAULT_LABEL_DELAY_DAYS)
    with pytest.raises(StateFileError, match="feature snapshot: a pickle"):
        StreamingFeatureEngine.restore(evil)
    # Protocol 0 (text) starts like no JSON document either.
    store.path("tx", 0).write_bytes(pickle.dumps(_Touch(marker), protocol=0))
    with pytest.raises(StateFileError, match="not a fraud-partition-snapshot document"):
        store.load("tx", 0)
    assert not marker.exists()


def test_snapshot_round_trips_recent_ids_and_log_clock(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, fsync=False)
    state = PartitionState(
        0, StreamingFeatureEngine(), next_offset=7, last_ts=100, recent_ids=RecentIds(3)
    )
    state.last_log_ms = 1_735_689_600_123
    for i in (5, 1, 4, 2):  # T5 is evicted
        state.recent_ids.add(f"T{i}", f"d{i}")
    store.save("tx", state, {0: 11, 2: 3})
    back, snap = store.restore("tx", 0, c.DEFAULT_LABEL_DELAY_DAYS, recent_ids_capacity=3)
    assert (snap.last_log_ms, back.last_log_ms) == (1_735_689_600_123, 1_735_689_600_123)
    assert back.snapshot_label_positions == {0: 11, 2: 3}
    assert (back.next_offset, back.last_ts) == (7, 100)
    assert back.recent_ids.state() == {"ids": ["T1", "T4", "T2"], "digests": ["d1", "d4", "d2"]}
    # Same behaviour as the window saved: T1 is the next to go.
    back.recent_ids.add("T9", "d9")
    assert [back.recent_ids.check(f"T{i}", f"d{i}") for i in (1, 4, 9)] == [
        st.NEW,
        st.REPEAT,
        st.REPEAT,
    ]
    # A smaller window on restore keeps the newest ids.
    small, _ = store.restore("tx", 0, c.DEFAULT_LABEL_DELAY_DAYS, recent_ids_capacity=2)
    assert small.recent_ids.state()["ids"] == ["T4", "T2"]
    fresh, none = store.restore("tx", 5, c.DEFAULT_LABEL_DELAY_DAYS, recent_ids_capacity=4)
    assert none is None and fresh.recent_ids.capacity == 4 and fresh.last_log_ms is None


def test_recent_ids_on_a_seeded_sequence() -> None:
    rng = np.random.default_rng(11)
    recent = RecentIds(capacity=4)
    outcomes = []
    for tid in rng.integers(0, 8, 24).tolist():
        digest = "same" if rng.random() < 0.75 else "other"
        verdict = recent.check(f"T{tid}", digest)
        outcomes.append(f"T{tid}:{digest}:{verdict}")
        if verdict == st.NEW:  # only accepted transactions claim their id
            recent.add(f"T{tid}", digest)
    assert outcomes == [
        "T1:same:new",
        "T1:same:repeat",
        "T6:same:new",
        "T3:other:new",
        "T4:same:new",  # full: T1 T6 T3 T4
        "T4:same:repeat",
        "T5:other:new",  # evicts T1
        "T0:same:new",  # evicts T6
        "T3:other:repeat",
        "T1:same:new",  # forgotten, so new again; evicts T3
        "T3:same:new",  # evicts T4
        "T7:same:new",  # evicts T5
        "T4:same:new",  # evicts T0
        "T0:same:new",  # evicts T1
        "T4:same:repeat",
        "T1:other:new",  # evicts T3
        "T6:other:new",  # evicts T7
        "T7:same:new",  # evicts T4
        "T7:same:repeat",
        "T4:same:new",  # evicts T0
        "T6:same:conflict",  # not added: T6 keeps its first content
        "T2:other:new",  # evicts T1
        "T1:same:new",  # evicts T6
        "T4:same:repeat",
    ]
    assert recent.state() == {
        "ids": ["T7", "T4", "T2", "T1"],
        "digests": ["same", "same", "other", "same"],
    }
    recent.add("T2", "same")  # an id held keeps its first content and place
    assert recent.check("T2", "same") == st.CONFLICT
    assert recent.state()["ids"] == ["T7", "T4", "T2", "T1"]
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        RecentIds(0)


def test_transaction_digest_is_stable_and_ignores_the_spelling_of_valid_values() -> None:
    rows = [
        _tx(),
        _tx(**{c.TIMESTAMP: "2025-03-01T11:00:00+01:00"}),  # validate_frame's path
        _tx(**{c.AMOUNT: 12}),
        _tx(**{c.AMOUNT: 12.0}),
        _tx(**{c.CUSTOMER_ID: "C2"}),
    ]
    digests = []
    for row in rows:
        valid, rejected = m.validate_batch([row])
        assert not rejected
        digests.append(st.transaction_digest(valid[0].row))
    # Pinned: digests are kept in snapshots, so they must not change between releases.
    assert digests[0] == "70117cd486ecf8ad"
    assert digests[1] == digests[0] and digests[2] == digests[3]
    assert len({digests[0], digests[2], digests[4]}) == 3


def test_pending_labels_are_bounded_and_refusals_counted() -> None:
    applied: list[str] = []

    class Recorder(StreamingFeatureEngine):
        def add_label(self, terminal_id: str, customer_id: str, tx_ts: int, is_fraud: int) -> None:
            applied.append(terminal_id)

    router = LabelRouter()
    state = router.partitions[0] = PartitionState(0, Recorder(), max_pending_labels=3)
    available = [30, 10, 20, 40, 5, 50]
    for i, at in enumerate(available):
        router.deliver(0, i, m.Label(f"x{i}", f"t{i}", "c", 0, 0, at, "", ""))
    # The heap was full from the fourth label on: t3, t4 and t5 are refused, held ones stay.
    assert (len(state.pending), state.labels_dropped) == (3, 3)
    state.advance_to(25)
    assert applied == ["t1", "t2"]
    router.deliver(0, 6, m.Label("x6", "t6", "c", 0, 0, 60, "", ""))
    router.deliver(0, 7, m.Label("x7", "t7", "c", 0, 0, 15, "", ""))  # late: applied at once
    router.deliver(0, 8, m.Label("x8", "t8", "c", 0, 0, 70, "", ""))  # fills the room made
    router.deliver(0, 9, m.Label("x9", "t9", "c", 0, 0, 80, "", ""))
    assert (applied[2:], len(state.pending), state.labels_dropped) == (["t7"], 3, 4)
    state.advance_to(100)
    assert applied[3:] == ["t0", "t6", "t8"]


# --- thresholds and scoring -------------------------------------------------------------------


def _write_meta(base: Path, version: int, thresholds: dict) -> None:
    """Written by hand: a file on disk may hold what ``ModelMetadata`` refuses to write."""
    path = base / str(version) / METADATA_FILE
    path.parent.mkdir(parents=True)
    meta = {"model_name": "m", "version": version, "thresholds": thresholds, "label_delay_days": 7}
    path.write_text(json.dumps(meta))


class _Answer:
    def __init__(self, scores: list[float], version: str) -> None:
        self.scores, self.model_version, self.latency_s = np.array(scores), version, 0.01


class _Client:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def predict(self, inputs: dict, *, deadline: float | None = None) -> _Answer:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[return-value]


def test_thresholds_per_answering_version(tmp_path: Path) -> None:
    _write_meta(tmp_path, 1, {"review": 0.5, "block": 0.9})
    _write_meta(tmp_path, 2, {"review": 0.2, "block": 0.4})
    store = ThresholdStore(tmp_path)
    scored = Scorer(_Client(_Answer([0.3, 0.95], "2")), store).score({}, 2)
    assert scored.version == 2
    assert [scored.thresholds.decide(s) for s in scored.scores] == [c.REVIEW, c.BLOCK]
    assert store.get(1) == ModelThresholds(1, 0.5, 0.9, 7)


def test_scoring_failures_become_unavailable(tmp_path: Path) -> None:
    _write_meta(tmp_path, 1, {"review": 0.9, "block": 0.5})
    store = ThresholdStore(tmp_path)
    with pytest.raises(ScoringUnavailable, match="review <= block"):
        Scorer(_Client(_Answer([0.1], "1")), store).score({}, 1)
    with pytest.raises(ScoringUnavailable, match="ConnectionError"):
        Scorer(_Client(ConnectionError("refused")), store).score({}, 1)
    with pytest.raises(ScoringUnavailable, match="does not exist"):
        Scorer(_Client(_Answer([0.1], "3")), store).score({}, 1)
    with pytest.raises(ScoringUnavailable, match="2 scores for 1 rows"):
        Scorer(_Client(_Answer([0.1, 0.2], "1")), store).score({}, 1)


# --- kafka settings, metrics, dataset ---------------------------------------------------------


def test_kafka_security_settings() -> None:
    env = {
        "FRAUD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FRAUD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FRAUD_KAFKA_SASL_PLAIN_USERNAME": "scorer",
        "FRAUD_KAFKA_SASL_PLAIN_PASSWORD": "s3cret",
        "FRAUD_KAFKA_SSL_CAFILE": "/etc/ca.pem",
    }
    cfg = client_config("a:9093, b:9093", KafkaSecurity.from_env(env))
    assert cfg["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert cfg["sasl_plain_password"] == "s3cret" and cfg["ssl_cafile"] == "/etc/ca.pem"
    assert client_config("k:9092") == {
        "bootstrap_servers": ["k:9092"],
        "security_protocol": "PLAINTEXT",
    }
    with pytest.raises(ValueError, match="needs sasl_mechanism"):
        KafkaSecurity(security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValueError, match="username and a password"):
        KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")


def test_metric_names_are_prefixed_and_exposed() -> None:
    from prometheus_client import generate_latest

    metrics = StreamMetrics()
    metrics.decisions.labels(c.BLOCK).inc()
    metrics.consumer_lag.labels("tx", "0").set(3)
    text = generate_latest(metrics.registry).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(n.startswith(PREFIX) for n in names)
    assert f'{PREFIX}decisions_total{{decision="{c.BLOCK}"}} 1.0' in text


def test_consumed_dataset_round_trip(tmp_path: Path) -> None:
    df = simulated(20, 10).head(200)
    ds = ConsumedDataset(tmp_path, "group/1", rows_per_file=70)
    rows = [orjson.loads(m.transaction_message(r)) for r in df.to_dict("records")]
    ds.append_transactions(rows)
    ds.append_transactions(rows[:10])  # redelivered after a crash: duplicates
    labels = [
        (0, i, m.parse_label(m.label_message(r))) for i, r in enumerate(df.to_dict("records"))
    ]
    ds.append_labels(labels[:150])
    ds.flush()
    assert not ds.wants_label(0, 149) and ds.wants_label(0, 150)
    ds.close()
    # A truncated last line (process killed mid-write) is skipped.
    part = sorted((tmp_path / "dataset" / "transactions").glob("part-*.jsonl"))[-1]
    with open(part, "ab") as f:
        f.write(b'{"transaction_id": "T9')
    got = load_consumed(tmp_path)
    assert len(got) == 150
    want = df.head(150)
    assert got[c.TRANSACTION_ID].tolist() == want[c.TRANSACTION_ID].tolist()
    assert got[c.LABEL].tolist() == want[c.LABEL].tolist()
    assert (got[c.TIMESTAMP].to_numpy() == want[c.TIMESTAMP].to_numpy()).all()
    assert ConsumedDataset(tmp_path, "group/1").label_positions == {0: 150}


def test_label_positions_log_survives_a_cut_last_line_and_is_compacted(tmp_path: Path) -> None:
    df = simulated(20, 10).head(30)
    labels = [
        (i % 2, i, m.parse_label(m.label_message(r))) for i, r in enumerate(df.to_dict("records"))
    ]
    ds = ConsumedDataset(tmp_path, "g")
    for start in range(0, 30, 10):  # one line per drain
        ds.append_labels(labels[start : start + 10])
    ds.close()
    log_path = tmp_path / "dataset" / "labels" / "_positions-g.jsonl"
    assert len(log_path.read_bytes().splitlines()) == 3
    with open(log_path, "ab") as f:
        f.write(b'{"0": 9')  # killed while appending
    again = ConsumedDataset(tmp_path, "g")
    assert again.label_positions == {0: 29, 1: 30}
    assert not again.wants_label(1, 29) and again.wants_label(0, 29)
    again.append_labels(labels[:1])  # the first save of a run compacts the log
    again.close()
    assert len(log_path.read_bytes().splitlines()) == 2
    assert ConsumedDataset(tmp_path, "g").label_positions == {0: 29, 1: 30}
    log_path.write_bytes(b'{"0": 1}\nnot json\n{"0": 2')
    with pytest.raises(ValueError, match=r"_positions-g.jsonl, line 2"):
        ConsumedDataset(tmp_path, "g")


def test_dynamic_pacing_sends_in_bursts_of_a_tenth_of_a_second(monkeypatch) -> None:
    from streaming import replay

    clock = {"now": 1_000.0}
    monkeypatch.setattr(replay.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(replay.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    sent, due = [], clock["now"]
    for _ in range(1_000):
        due = replay._wait_dynamic(due, 100.0)  # the demo's slow phase: 100 tx/s
        sent.append(clock["now"])
    times = np.asarray(sent)
    # The rate holds (999 gaps of 10 ms, give or take the first burst) ...
    assert times[-1] - times[0] == pytest.approx(9.9, abs=0.11)
    # ... but messages leave in bursts: a sleep only once the next one is over 100 ms ahead,
    # so 11 messages (110 ms of traffic) per burst.
    bursts = np.split(times, np.flatnonzero(np.diff(times) > 0) + 1)
    assert len(bursts) == 91
    assert {len(b) for b in bursts[1:-1]} == {11}
    # At a fast rate, no message goes out later than it is due.
    due, late = clock["now"], []
    for _ in range(1_000):
        planned = due
        due = replay._wait_dynamic(due, 1_500.0)
        late.append(clock["now"] - planned)
    assert max(late) <= 0


def test_snapshot_writer_writes_the_latest_blob_and_reports_failures(tmp_path: Path) -> None:
    from streaming.state import SnapshotWriter

    store = SnapshotStore(tmp_path, fsync=False)
    engine = StreamingFeatureEngine(c.DEFAULT_LABEL_DELAY_DAYS)
    writer = SnapshotWriter(store)
    for offset in (10, 20, 30):
        state = PartitionState(0, engine, next_offset=offset)
        writer.submit("tx", 0, store.encode("tx", state, {0: offset}))
    writer.flush()
    assert store.load("tx", 0).next_offset == 30  # never an older blob after a newer one
    writer.close()

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the snapshot directory should be")
    bad = SnapshotWriter(SnapshotStore(blocked, fsync=False))
    bad.submit("tx", 1, b"x")
    with pytest.raises(RuntimeError, match="writing a feature snapshot to .*not-a-dir"):
        bad.flush()
    with pytest.raises(RuntimeError, match="writing a feature snapshot"):
        bad.submit("tx", 1, b"y")


def test_batch_histogram_exposes_what_prometheus_histogram_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from streaming.metrics import SCORE_BUCKETS, BatchHistogram

    values = np.random.default_rng(3).beta(0.5, 5, 5_000)
    values[:5] = SCORE_BUCKETS[:5]  # values on a bound belong to its bucket (le)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hist = BatchHistogram("h", "doc", SCORE_BUCKETS, ours)
    ref = Histogram("h", "doc", buckets=SCORE_BUCKETS, registry=theirs)
    for chunk in np.array_split(values, 7):
        hist.observe_many(chunk)
    for v in values:
        ref.observe(v)
    for le in (*map(str, SCORE_BUCKETS), "+Inf"):
        assert ours.get_sample_value("h_bucket", {"le": le}) == theirs.get_sample_value(
            "h_bucket", {"le": le}
        ), le
    assert ours.get_sample_value("h_count") == 5_000
    assert ours.get_sample_value("h_sum") == pytest.approx(theirs.get_sample_value("h_sum"))
    assert b"# TYPE h histogram" in generate_latest(ours)


# --- slow-batch diagnostics ---------------------------------------------------------------------


def test_stage_clock_splits_the_batch_time_by_stage(monkeypatch) -> None:
    from streaming import consumer as sc

    now = iter([10.5, 13.0, 13.25])
    monkeypatch.setattr(sc.time, "monotonic", lambda: next(now))
    clock = sc._StageClock(started=10.0)
    clock.mark("labels")
    clock.mark("score")
    assert clock.stages == [("labels", 0.5), ("score", 2.5)]
    assert clock.describe() == "labels 500 ms, score 2500 ms, total 3250 ms"


def test_gc_pause_log_names_the_generation_of_a_long_collection(caplog) -> None:
    import gc
    import logging

    from streaming import gcpolicy

    slow, quiet = gcpolicy.GcPauseLog(0.0), gcpolicy.GcPauseLog(3600.0)
    with caplog.at_level(logging.WARNING, logger=gcpolicy.__name__):
        gc.callbacks.extend([slow, quiet])
        try:
            gc.collect(2)
        finally:
            gc.callbacks.remove(slow)
            gc.callbacks.remove(quiet)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("garbage collection of generation 2 took")


# --- hot-path pieces ----------------------------------------------------------------------------


def test_streaming_features_come_out_in_the_contract_order() -> None:
    engine = StreamingFeatureEngine()
    engine.add_label("T1", "C1", 1_000, 1)
    for ts, terminal in ((1_000_000, "T1"), (1_000_060, "T2")):
        assert tuple(engine.update("C1", terminal, ts, 12.5)) == c.STATEFUL_FEATURES


def test_gc_policy_freezes_survivors_and_frees_their_cycles_at_the_full_collection() -> None:
    import gc
    import weakref

    from streaming.gcpolicy import GcPolicy

    class Node:
        pass

    def cycle() -> tuple[Node, weakref.ref]:
        node = Node()
        node.me = node  # type: ignore[attr-defined]
        return node, weakref.ref(node)

    saved = gc.get_threshold()
    now = [0.0]
    with GcPolicy(full_interval_s=60.0, young_threshold=123_456, clock=lambda: now[0]) as policy:
        assert gc.get_threshold()[0] == 123_456
        kept, kept_ref = cycle()
        policy.after_batch()  # outlived the batch: frozen, out of the collector's sight
        assert gc.get_freeze_count() > 0
        del kept
        gc.collect()
        assert kept_ref() is not None
        # A batch's own cyclic garbage goes at the end of that batch, not frozen with the rest.
        dropped, dropped_ref = cycle()
        del dropped
        policy.after_batch()
        assert dropped_ref() is None
        assert policy.full_collections == 0
        now[0] = 60.0
        policy.after_batch()  # the interval is up: unfreeze, collect everything, freeze again
        assert kept_ref() is None
        assert policy.full_collections == 1 and policy.collected >= 1
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == saved
