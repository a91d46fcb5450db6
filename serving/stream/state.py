"""Per-partition feature state, label routing and crash-safe snapshots.

Why per partition: transactions are keyed by customer, so a partition owns its customers'
windows; when the group rebalances, a partition's state moves with it (through its snapshot).
Terminal risk needs every label, so each partition's engine gets all of them, each applied when
the partition's own event time reaches the label's ``label_available_at`` (partitions progress at
different event times, so one shared gate would be wrong for some of them).

Restart invariant: a partition's engine holds every label with ``available_at <= last_ts`` that
was read before its snapshot, plus those that arrived late (after ``last_ts`` had passed their
availability) and were applied on arrival. ``label_positions`` records how far the labels topic
had been read at snapshot time, so after a restart (which re-reads the labels topic from the
beginning) a label is skipped exactly when the restored engine already has it.
"""

from __future__ import annotations

import heapq
import itertools
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.features.stream import StreamingFeatureEngine
from serving.stream.messages import Label

SNAPSHOT_VERSION = 1

# heap entry: (available_at, arrival sequence, label); the sequence keeps equal times in arrival
# order and stops comparisons from reaching the Label.
_HeapEntry = tuple[int, int, Label]


@dataclass
class PartitionState:
    """Feature state of one transactions-topic partition."""

    partition: int
    engine: StreamingFeatureEngine
    # Next offset to process; None = wherever the consumer group starts it.
    next_offset: int | None = None
    # Event time (epoch s) of the newest transaction processed: labels available by then are in.
    last_ts: int | None = None
    # Kafka timestamp (ms) of the newest accepted transaction: how far the log clock has moved.
    last_log_ms: int | None = None
    # Labels-topic positions (label partition -> offset) read before the snapshot was taken.
    snapshot_label_positions: dict[int, int] = field(default_factory=dict)
    # Offsets below this were decided before (committed) but are missing from the restored state:
    # they are replayed through the engine only, without scoring or producing again.
    silent_until: int = -1
    # Labels-topic positions already handed to this state in this process; set when the topic is
    # re-read for a newly assigned partition so the partitions kept do not get labels twice.
    delivered_positions: dict[int, int] = field(default_factory=dict)
    pending: list[_HeapEntry] = field(default_factory=list)

    def offer_label(self, label_partition: int, offset: int, entry: _HeapEntry) -> None:
        if offset < self.delivered_positions.get(label_partition, 0):
            return
        label = entry[2]
        if self.last_ts is not None and label.available_at <= self.last_ts:
            if offset < self.snapshot_label_positions.get(label_partition, 0):
                return  # read and applied before the snapshot: the restored engine has it
            self._apply(label)  # late label: the transactions it concerned are past
        else:
            heapq.heappush(self.pending, entry)

    def advance_to(self, ts: int) -> None:
        """Apply every pending label available at ``ts`` (call before ``engine.update``)."""
        pending = self.pending
        while pending and pending[0][0] <= ts:
            self._apply(heapq.heappop(pending)[2])
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def _apply(self, label: Label) -> None:
        self.engine.add_label(label.terminal_id, label.tx_ts, label.is_fraud)


class LabelRouter:
    """Hands every label read from the labels topic to every owned partition's state."""

    def __init__(self) -> None:
        self.partitions: dict[int, PartitionState] = {}
        self._seq = itertools.count()

    def deliver(self, label_partition: int, offset: int, label: Label) -> None:
        entry = (label.available_at, next(self._seq), label)
        for state in self.partitions.values():
            state.offer_label(label_partition, offset, entry)


@dataclass(frozen=True)
class Snapshot:
    topic: str
    partition: int
    next_offset: int
    last_ts: int | None
    label_positions: dict[int, int]
    engine: bytes
    written_at: float


class SnapshotStore:
    """One file per transactions partition under ``<state_dir>/snapshots``, replaced atomically.

    A partition's file is only ever written by the instance that owns the partition, so several
    instances may share the directory.
    """

    def __init__(self, state_dir: Path, fsync: bool = True) -> None:
        self.dir = Path(state_dir) / "snapshots"
        self.fsync = fsync

    def path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}-{partition}.snapshot"

    def load(self, topic: str, partition: int) -> Snapshot | None:
        path = self.path(topic, partition)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            raw = pickle.loads(blob)
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f"{path}: corrupt feature snapshot ({err}); move it away") from err
        if raw.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"{path}: snapshot version {raw.get('version')} != {SNAPSHOT_VERSION}; "
                "it was written by another release: move it away to rebuild the state"
            )
        return Snapshot(
            topic=raw["topic"],
            partition=raw["partition"],
            next_offset=raw["next_offset"],
            last_ts=raw["last_ts"],
            label_positions=dict(raw["label_positions"]),
            engine=raw["engine"],
            written_at=raw["written_at"],
        )

    def save(self, topic: str, state: PartitionState, label_positions: dict[int, int]) -> int:
        """Persist one partition's state now; returns the bytes written."""
        blob = self.encode(topic, state, label_positions)
        self.write(topic, state.partition, blob)
        return len(blob)

    def encode(self, topic: str, state: PartitionState, label_positions: dict[int, int]) -> bytes:
        """The snapshot of one partition as bytes (a consistent copy: the state may move on)."""
        if state.next_offset is None:
            raise ValueError(f"{topic}-{state.partition}: nothing processed yet, nothing to save")
        return pickle.dumps(
            {
                "version": SNAPSHOT_VERSION,
                "topic": topic,
                "partition": state.partition,
                "next_offset": state.next_offset,
                "last_ts": state.last_ts,
                "label_positions": dict(label_positions),
                "engine": state.engine.snapshot(),
                "written_at": time.time(),
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def write(self, topic: str, partition: int, blob: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(topic, partition)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old or the new snapshot, never half of one

    def restore(
        self, topic: str, partition: int, label_delay_days: int
    ) -> tuple[PartitionState, Snapshot | None]:
        """The partition's state from its snapshot, or a fresh one when there is none."""
        snap = self.load(topic, partition)
        if snap is None:
            return PartitionState(partition, StreamingFeatureEngine(label_delay_days)), None
        engine = StreamingFeatureEngine.restore(snap.engine)
        if engine.label_delay_days != label_delay_days:
            raise ValueError(
                f"{self.path(topic, partition)}: snapshot built with a label delay of "
                f"{engine.label_delay_days} days, consumer runs with {label_delay_days}: the "
                "features would not match the model; move the state dir away or fix the flag"
            )
        state = PartitionState(
            partition,
            engine,
            next_offset=snap.next_offset,
            last_ts=snap.last_ts,
            snapshot_label_positions=dict(snap.label_positions),
        )
        return state, snap


class SnapshotWriter:
    """Writes encoded snapshots on a background thread.

    fsync took up to a quarter of a second on this machine's disk, and it ran in the scoring
    loop: every transaction that arrived meanwhile waited for it (the p99 latency). Only the
    write moves off the loop; the state is encoded in the loop, so each file is a consistent
    cut. A file written late is merely older, and a restart replays from an older snapshot up to
    the committed offset through the feature engine only, so this never changes a feature or
    adds a duplicate decision. Newer blobs for a partition replace queued older ones.
    """

    def __init__(self, store: SnapshotStore) -> None:
        import threading

        self.store = store
        self._lock = threading.Condition()
        self._queued: dict[tuple[str, int], bytes] = {}
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    def submit(self, topic: str, partition: int, blob: bytes) -> None:
        with self._lock:
            self._raise_error()
            self._queued[(topic, partition)] = blob
            self._lock.notify_all()

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every submitted snapshot is on disk; raises the writer's failure."""
        with self._lock:
            if not self._lock.wait_for(
                lambda: (not self._queued and not self._busy) or self._error is not None,
                timeout=timeout_s,
            ):
                raise TimeoutError(
                    f"snapshots to {self.store.dir} not written within {timeout_s:.0f} s"
                )
            self._raise_error()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._thread.join(timeout=10)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(
                f"writing a feature snapshot to {self.store.dir} failed: {self._error}"
            ) from self._error

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queued or self._closed)
                if not self._queued:
                    return
                (topic, partition), blob = self._queued.popitem()
                self._busy = True
            try:
                self.store.write(topic, partition, blob)
            except BaseException as err:  # handed to the loop thread at its next call
                with self._lock:
                    self._error = err
                    self._busy = False
                    self._lock.notify_all()
                return
            with self._lock:
                self._busy = False
                self._lock.notify_all()
