"""What retraining leaves in its run directory, shared by every process that retrains there:
``history.jsonl`` (one JSON line per trigger and per outcome) and the lock file that keeps to
one run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from monitoring.retrain_config import LOCAL

log = logging.getLogger(__name__)

__all__ = [
    "HISTORY_FILE",
    "LOCK_FILE",
    "RunHistory",
    "RunLock",
    "RunRecord",
    "iso",
]

HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".retrain.lock"

# Record statuses; the last five are run outcomes (``fraud_retrain_runs_total{outcome}``).
# DUPLICATE: another replica (or an earlier attempt) already submitted the run for this event.
STARTED, REFUSED = "started", "refused"
PUSHED, NOT_BLESSED, FAILED, SUBMITTED = "pushed", "not_blessed", "failed", "submitted"
DUPLICATE = "duplicate"
# Refusal causes (``fraud_retrain_refused_total{cause}``).
IN_PROGRESS, COOLDOWN = "in_progress", "cooldown"


def iso(epoch: float | None) -> str | None:
    """A Unix time as UTC ISO 8601 to the microsecond, as the history records times."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RunRecord:
    """One line of the history file."""

    status: str
    reason: str
    run_id: str | None = None
    mode: str = LOCAL
    requested_at: str | None = None
    requested_at_unix: float | None = None
    started_at: str | None = None
    started_at_unix: float | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    version: int | None = None
    # The label the push put the version under (canary, stable; unmanaged: no model config).
    serving: str | None = None
    gate_reasons: list[str] | None = None
    error: str | None = None
    cause: str | None = None
    message: str | None = None
    params: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    kfp_run_id: str | None = None
    # The event time the run's windows end at, when the trigger gave one (a drift event's).
    as_of: str | None = None
    # DUPLICATE: the run (KFP display name) that already covers this event.
    duplicate_of: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def to_json(self) -> str:
        return json.dumps(
            {k: v for k, v in asdict(self).items() if v is not None}, default=str, sort_keys=True
        )


class RunHistory:
    """``<run_dir>/history.jsonl``: appended to by every trigger, read back as dicts."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / HISTORY_FILE

    def append(self, record: RunRecord) -> None:
        # One write of one line in append mode: concurrent writers never interleave inside it.
        with open(self.path, "a") as f:
            f.write(record.to_json() + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first (unreadable lines, e.g. a torn last line, are skipped)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("%s:%d: unreadable history line skipped", self.path, i)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """The latest record of each run, in start order (a run that only has ``started`` was
        in progress, or its process died)."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self.records():
            if record.get("run_id"):
                latest[record["run_id"]] = record
        return list(latest.values())

    def last_start(self) -> float | None:
        """Unix time of the latest start recorded by any process sharing the run directory."""
        starts = [
            r["started_at_unix"]
            for r in self.records()
            if r.get("status") == STARTED and r.get("started_at_unix") is not None
        ]
        return max(starts) if starts else None


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.retrain.lock``, held for a run.

    flock is per open file: it excludes other processes and other trigger objects alike, and
    the kernel drops it when a process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE

    def try_acquire(self) -> IO[str] | None:
        """The locked file, to give to ``release``; None when another holder has it."""
        f = open(self.path, "a")  # noqa: SIM115 - held for the run, see release
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    @staticmethod
    def release(f: IO[str]) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
