"""Per-partition feature state, label routing, recent transaction ids and crash-safe snapshots.

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

Snapshots are data only (``core.statefile``): whoever can write the state directory can
corrupt the features, but cannot make the consumer run code.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core import contract as c
from core import statefile
from core.features.stream import StreamingFeatureEngine
from streaming.messages import Label

SNAPSHOT_FORMAT = "fraud-partition-snapshot"
# Bumped whenever the document's fields change: a file of another version is refused.
SNAPSHOT_VERSION = 2
_REMEDY = (
    "move it away (the consumer then rebuilds the partition's features from the retained "
    "history of the topic)"
)

# A label is about 0.6 kB in memory (the Label and its strings, measured with tracemalloc), held
# once however many partitions' heaps point at it, plus 8 bytes per heap slot. 500,000 labels
# are ~0.3 GB, under a third of the consumer's 1 GiB limit (k8s/base/consumer): 1,000 s of
# labels at 500 labels/s, so a partition may lag the labels topic by ~17 minutes of event time
# before labels are refused.
DEFAULT_MAX_PENDING_LABELS = 500_000
# 100,000 ids are ~17 MB per partition (an id, its 16-hex-digit digest, a dict entry and a deque
# slot: ~175 bytes): 200 s of a partition at 500 tx/s, 10 s at the consumer's ~10,000 tx/s
# peak; producer retries and replays of a recent batch come back well within that.
DEFAULT_RECENT_IDS = 100_000

# RecentIds.check verdicts.
NEW = "new"
REPEAT = "repeat"
CONFLICT = "conflict"


def transaction_digest(row: Mapping[str, Any]) -> str:
    """Content digest of a validated transaction row (``messages.Transaction.row``): 64-bit
    blake2b of its ``contract.LIVE_FIELDS`` values in that order, as 16 hex digits.

    Stable across processes and releases (no hash seed); validated rows hold canonical values
    (timestamp text, float amount), so a time or amount spelt another way gives the same
    digest. Two different contents under one id share a digest with probability 2**-64.
    """
    payload = orjson.dumps([row[f] for f in c.LIVE_FIELDS])
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


class RecentIds:
    """The ``capacity`` most recently accepted transaction ids of a partition, with digests.

    ``check`` says what an incoming transaction is: ``NEW``, ``REPEAT`` (that id was accepted
    with the same content: skip it) or ``CONFLICT`` (that id was accepted with other content).
    It changes nothing: ``add`` records a transaction once it is accepted, so a message that is
    rejected or dead-lettered never claims its id. Beyond ``capacity`` the oldest id is
    forgotten (so a repeat older than the window reads as ``NEW``).
    """

    def __init__(self, capacity: int = DEFAULT_RECENT_IDS) -> None:
        if capacity < 1:
            raise ValueError(f"recent ids: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # A dict iterates in insertion order as fast as a list; an OrderedDict, which could also
        # evict, took 11 ms per 100,000 ids to list for a snapshot. The deque is the eviction
        # order, and as an id is only ever inserted once, it is also the dict's order.
        self._digests: dict[str, str] = {}
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, transaction_id: str, digest: str) -> str:
        seen = self._digests.get(transaction_id)
        if seen is None:
            return NEW
        return REPEAT if seen == digest else CONFLICT

    def add(self, transaction_id: str, digest: str) -> None:
        """Remember an accepted transaction. An id already held keeps its place and digest
        (the content accepted first is the one decided)."""
        digests = self._digests
        if transaction_id in digests:
            return
        digests[transaction_id] = digest
        self._order.append(transaction_id)
        if len(self._order) > self.capacity:
            del digests[self._order.popleft()]

    def state(self) -> dict[str, list[str]]:
        """Ids and digests, oldest first (JSON-ready; ``from_state`` takes it back)."""
        return {"ids": list(self._digests), "digests": list(self._digests.values())}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], capacity: int = DEFAULT_RECENT_IDS) -> RecentIds:
        """The window ``state()`` described; with a smaller ``capacity``, its newest ids."""
        ids, digests = state["ids"], state["digests"]
        if len(ids) != len(digests) or not all(
            type(x) is str for x in itertools.chain(ids, digests)
        ):
            raise ValueError("recent ids: ids and digests must be two string lists of one length")
        recent = cls(capacity)
        start = max(0, len(ids) - capacity)
        recent._digests = dict(zip(ids[start:], digests[start:], strict=True))
        recent._order = deque(ids[start:])
        if len(recent._digests) != len(recent._order):
            raise ValueError("recent ids: an id appears twice")
        return recent


# heap entry: (available_at, arrival sequence, label); the sequence keeps equal times in arrival
# order and stops comparisons from reaching the Label.
_HeapEntry = tuple[int, int, Label]


@dataclass
class PartitionState:
    """Feature state of one transactions-topic partition.

    ``max_pending_labels`` bounds the labels held until the partition's event time reaches
    their availability (default ``DEFAULT_MAX_PENDING_LABELS`` = 500,000: ~0.3 GB, as a label
    takes ~0.6 kB, shared by every partition's heap that holds it). Beyond it the incoming label
    is refused and counted in ``labels_dropped``.
    """

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
    # Labels read before they are available at this partition's event time, soonest first.
    pending: list[_HeapEntry] = field(default_factory=list)
    # Bound of ``pending`` (see DEFAULT_MAX_PENDING_LABELS for what it means in memory). A label
    # arriving when it is full is refused and counted in ``labels_dropped``: the labels held
    # stay, and as the topic is in about availability order the one refused is about the one
    # needed last. The partition's terminal features then miss it, hence the count.
    max_pending_labels: int = DEFAULT_MAX_PENDING_LABELS
    labels_dropped: int = 0  # in this process; not in the snapshot
    # Accepted transaction ids, to tell a resent transaction from a reused id.
    recent_ids: RecentIds = field(default_factory=RecentIds)

    def offer_label(self, label_partition: int, offset: int, entry: _HeapEntry) -> None:
        if offset < self.delivered_positions.get(label_partition, 0):
            return
        label = entry[2]
        if self.last_ts is not None and label.available_at <= self.last_ts:
            if offset < self.snapshot_label_positions.get(label_partition, 0):
                return  # read and applied before the snapshot: the restored engine has it
            self._apply(label)  # late label: the transactions it concerned are past
        elif len(self.pending) >= self.max_pending_labels:
            self.labels_dropped += 1
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
        self.engine.add_label(label.terminal_id, label.customer_id, label.tx_ts, label.is_fraud)


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
    """A partition snapshot as read (the engine and the ids still as data)."""

    topic: str
    partition: int
    next_offset: int
    last_ts: int | None
    last_log_ms: int | None
    label_positions: dict[int, int]
    engine: dict[str, Any]  # StreamingFeatureEngine.state()
    recent_ids: dict[str, Any]  # RecentIds.state()
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
        raw = statefile.loads(blob, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, str(path), _REMEDY)
        with statefile.reading(str(path), SNAPSHOT_FORMAT, _REMEDY):
            return Snapshot(
                topic=str(raw["topic"]),
                partition=int(raw["partition"]),
                next_offset=int(raw["next_offset"]),
                last_ts=_int_or_none(raw["last_ts"]),
                last_log_ms=_int_or_none(raw["last_log_ms"]),
                label_positions={int(p): int(o) for p, o in raw["label_positions"]},
                engine=raw["engine"],
                recent_ids=raw["recent_ids"],
                written_at=float(raw["written_at"]),
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
        body = {
            "topic": topic,
            "partition": state.partition,
            "next_offset": state.next_offset,
            "last_ts": state.last_ts,
            "last_log_ms": state.last_log_ms,
            # Pairs: JSON object keys are strings, label partitions are ints.
            "label_positions": list(label_positions.items()),
            "engine": state.engine.state(),
            "recent_ids": state.recent_ids.state(),
            "written_at": time.time(),
        }
        return statefile.dumps(statefile.stamp(SNAPSHOT_FORMAT, SNAPSHOT_VERSION, body))

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
        self,
        topic: str,
        partition: int,
        label_delay_days: int,
        *,
        max_pending_labels: int = DEFAULT_MAX_PENDING_LABELS,
        recent_ids_capacity: int = DEFAULT_RECENT_IDS,
    ) -> tuple[PartitionState, Snapshot | None]:
        """The partition's state from its snapshot, or a fresh one when there is none."""
        snap = self.load(topic, partition)
        if snap is None:
            state = PartitionState(
                partition,
                StreamingFeatureEngine(label_delay_days),
                max_pending_labels=max_pending_labels,
                recent_ids=RecentIds(recent_ids_capacity),
            )
            return state, None
        where = str(self.path(topic, partition))
        engine = StreamingFeatureEngine.from_state(snap.engine, f"{where}: engine")
        if engine.label_delay_days != label_delay_days:
            raise ValueError(
                f"{where}: snapshot built with a label delay of "
                f"{engine.label_delay_days} days, consumer runs with {label_delay_days}: the "
                "features would not match the model; move the state dir away or fix the flag"
            )
        with statefile.reading(where, SNAPSHOT_FORMAT, _REMEDY):
            recent = RecentIds.from_state(snap.recent_ids, recent_ids_capacity)
        state = PartitionState(
            partition,
            engine,
            next_offset=snap.next_offset,
            last_ts=snap.last_ts,
            last_log_ms=snap.last_log_ms,
            snapshot_label_positions=dict(snap.label_positions),
            max_pending_labels=max_pending_labels,
            recent_ids=recent,
        )
        return state, snap


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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
