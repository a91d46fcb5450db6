"""Retraining on fresh data: a single-flight trigger with a cooldown, and scheduled retraining.

``RetrainTrigger.trigger(reason, as_of=None)`` starts one retraining run in a background thread, or refuses
(returned, logged, counted, and recorded) when a run is already going, in this process or in
another one sharing the run directory (a file lock), or when the last run *started* less than
``cooldown_s`` ago (the history file makes that hold across restarts too). Either way the call
returns at once, so the consumer's loop never waits for training.

A run:

* local mode: merges the consumer's persisted transactions and labels (``<state_dir>/dataset``,
  ``streaming.dataset``) with an optional historical labelled base file, deduplicates by
  transaction id, keeps a label only where it was known at ``as_of`` (default: the latest event
  time), writes the result to ``<run_dir>/<run_id>/dataset.parquet`` and runs the real pipeline
  on it with ``pipelines.runners.run_local`` (relative windows by default: the last
  ``train_days`` + ``eval_days`` days whose labels were complete at ``as_of``);
* cluster mode: submits the compiled pipeline with ``kfp.Client`` (``app.retrain_cli``), with
  the dataset exported first to a path the cluster reads, when one is configured; with several
  consumer replicas, ``monitoring.retrain_claim`` keeps it to one run per drift event.

A trigger's ``as_of`` (a drift event gives the event time its retrain is due at) is where the
relative windows end; without one, the configured ``as_of``, else the latest event time in the
data (or, with nothing read here, the submission time).

The runner is a plain callable ``runner(job) -> {"pushed": bool, "version": ..., ...}`` (the
pipeline's push result), given by whoever builds the trigger: the ``fraud`` CLI gives the local
or the cluster pipeline runner (``app.retrain_cli``), tests a real, small training function.

Every trigger is appended to ``<run_dir>/history.jsonl``: a ``started`` line, then one with the
outcome (``pushed``, ``not_blessed``, ``failed``, ``submitted``, ``duplicate``), or a single
``refused`` line.
Metrics: ``monitoring.metrics.RetrainMetrics``.

``run_schedule`` runs the trigger on a schedule (``fraud retrain --every 6h``).

Parts: the dataset in ``monitoring.retrain_data``, the history file and the lock in
``monitoring.retrain_history``, the configuration and the job in ``monitoring.retrain_config``,
durations in ``core.durations``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from core.durations import format_duration, parse_duration
from monitoring.metrics import RetrainMetrics
from monitoring.retrain_config import (
    CLUSTER,
    LOCAL,
    RetrainConfig,
    RetrainJob,
    Runner,
    TriggerResult,
)
from monitoring.retrain_data import (
    build_training_dataset,
    check_windows,
    checked_windows,
    load_consumed_dataset,
    write_training_dataset,
)
from monitoring.retrain_history import (
    COOLDOWN,
    DUPLICATE,
    FAILED,
    HISTORY_FILE,
    IN_PROGRESS,
    LOCK_FILE,
    NOT_BLESSED,
    PUSHED,
    REFUSED,
    STARTED,
    SUBMITTED,
    RunHistory,
    RunLock,
    RunRecord,
    iso,
)

log = logging.getLogger(__name__)

# What callers import from here, the parts' names included.
__all__ = [
    "CLUSTER",
    "COOLDOWN",
    "DATASET_FILE",
    "DUPLICATE",
    "FAILED",
    "HISTORY_FILE",
    "IN_PROGRESS",
    "LOCAL",
    "LOCK_FILE",
    "NOT_BLESSED",
    "PUSHED",
    "REFUSED",
    "STARTED",
    "SUBMITTED",
    "RetrainConfig",
    "RetrainJob",
    "RetrainMetrics",
    "RetrainTrigger",
    "RunRecord",
    "Runner",
    "TriggerResult",
    "build_training_dataset",
    "check_windows",
    "format_duration",
    "load_consumed_dataset",
    "parse_duration",
    "run_schedule",
]

DATASET_FILE = "dataset.parquet"


def _outcome(result: Mapping[str, Any]) -> str:
    pushed = result.get("pushed")
    if pushed is True:
        if result.get("version") is None:
            raise ValueError(f"runner reported a push without a version: {dict(result)}")
        return PUSHED
    if pushed is False:
        return NOT_BLESSED
    if result.get("duplicate_of"):
        return DUPLICATE
    if result.get("kfp_run_id"):
        return SUBMITTED
    raise ValueError(f"runner result says neither pushed nor submitted: {dict(result)}")


# --- the trigger ----------------------------------------------------------------------------------


class RetrainTrigger:
    """Single-flight, cooled-down retraining; see the module doc."""

    def __init__(
        self,
        config: RetrainConfig,
        runner: Runner,
        metrics: RetrainMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.runner = runner
        self.metrics = metrics or RetrainMetrics()
        self.clock = clock
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._history = RunHistory(self.run_dir)
        self.history_path = self._history.path
        self._run_lock = RunLock(self.run_dir)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: RunRecord | None = None
        self._last: RunRecord | None = None
        self._lock_file: IO[str] | None = None
        self._done = threading.Event()
        self._done.set()

    # -- state -------------------------------------------------------------------------------------
    @property
    def in_progress(self) -> bool:
        return not self._done.is_set()

    def last_start(self) -> float | None:
        """Unix time of the latest start recorded by any process sharing the run directory."""
        return self._history.last_start()

    def cooldown_until(self) -> float | None:
        last = self.last_start()
        return None if last is None else last + self.config.cooldown_s

    def history(self) -> list[dict[str, Any]]:
        """Every record, oldest first (unreadable lines, e.g. a torn last line, are skipped)."""
        return self._history.records()

    def runs(self) -> list[dict[str, Any]]:
        """The latest record of each run, in start order (a run that only has ``started`` was
        in progress, or its process died)."""
        return self._history.runs()

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = asdict(self._current) if self._current and self.in_progress else None
            last = asdict(self._last) if self._last else None
        until = self.cooldown_until()
        return {
            "in_progress": current is not None,
            "current": current,
            "last": last,
            "cooldown_until": iso(until),
            "cooling_down": until is not None and self.clock() < until,
        }

    # -- triggering --------------------------------------------------------------------------------
    def trigger(self, reason: str, as_of: str | None = None) -> TriggerResult:
        """Start a run in the background, or refuse; never blocks on training. ``as_of``: where
        the run's relative windows end (default: the config's, else the data's latest event)."""
        now = self.clock()
        with self._lock:
            if self.in_progress:
                assert self._current is not None
                busy = f"run {self._current.run_id} in progress since {self._current.started_at}"
                return self._refuse(reason, IN_PROGRESS, busy, now)
            lock_file = self._run_lock.try_acquire()
            if lock_file is None:
                busy = f"another process holds {self._run_lock.path} (a run is in progress)"
                return self._refuse(reason, IN_PROGRESS, busy, now)
            try:
                cooling = self._cooldown_message(now)
                record = None if cooling else self._record_start(reason, now, as_of)
            except BaseException:
                RunLock.release(lock_file)
                raise
            if record is None:
                RunLock.release(lock_file)
                return self._refuse(reason, COOLDOWN, cooling, now)
            self._start(record, lock_file)
        run_id = record.run_id
        return TriggerResult(True, reason, run_id=run_id, message=f"started run {run_id}")

    def wait(self, timeout: float | None = None) -> RunRecord | None:
        """Block until the current run (if any) finishes; returns the last finished record."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"retrain run still going after {timeout} s")
        with self._lock:
            return self._last

    def _cooldown_message(self, now: float) -> str:
        """Why ``now`` is within the cooldown of the last start; empty when it is not."""
        last = self.last_start()
        if last is None or now >= last + self.config.cooldown_s:
            return ""
        return (
            f"last run started at {iso(last)}; cooldown of "
            f"{format_duration(self.config.cooldown_s)} lasts until "
            f"{iso(last + self.config.cooldown_s)}"
        )

    def _record_start(self, reason: str, now: float, as_of: str | None) -> RunRecord:
        run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        record = RunRecord(
            status=STARTED,
            reason=reason,
            run_id=run_id,
            mode=self.config.mode,
            requested_at=iso(now),
            requested_at_unix=now,
            started_at=iso(now),
            started_at_unix=now,
            as_of=as_of,
        )
        self._history.append(record)
        return record

    def _start(self, record: RunRecord, lock_file: IO[str]) -> None:
        """Hand the run to its thread; called with ``self._lock`` held."""
        self._lock_file = lock_file
        self._current = record
        self._done.clear()
        self.metrics.runs.labels(STARTED).inc()
        self.metrics.in_progress.set(1)
        log.info("retrain %s started (%s mode): %s", record.run_id, self.config.mode, record.reason)
        self._thread = threading.Thread(
            target=self._execute, args=(record,), name=f"retrain-{record.run_id}", daemon=True
        )
        self._thread.start()

    def _refuse(self, reason: str, cause: str, message: str, now: float) -> TriggerResult:
        log.info("retrain refused (%s): %s; trigger reason: %s", cause, message, reason)
        self.metrics.refused.labels(cause).inc()
        self._history.append(
            RunRecord(
                status=REFUSED,
                reason=reason,
                mode=self.config.mode,
                requested_at=iso(now),
                requested_at_unix=now,
                cause=cause,
                message=message,
            )
        )
        return TriggerResult(False, reason, refused=cause, message=message)

    # -- the run -----------------------------------------------------------------------------------
    def _execute(self, record: RunRecord) -> None:
        started = time.monotonic()
        outcome = FAILED
        try:
            job = self.prepare_job(record.run_id or "", record.reason, record.as_of)
            record.params, record.dataset = job.params, job.dataset
            result = self.runner(job)
            outcome = _outcome(result)
            _record_result(record, result)
        except Exception as err:  # every failure is an outcome to record, not a crash
            record.error = f"{type(err).__name__}: {err}"
            log.exception("retrain %s failed", record.run_id)
        finally:
            # Whatever recording the outcome meets, the trigger must not stay busy for good.
            try:
                self._record_outcome(record, outcome, time.monotonic() - started)
            finally:
                self._finish(record)

    def _record_outcome(self, record: RunRecord, outcome: str, duration: float) -> None:
        record.status = outcome
        record.ended_at = iso(self.clock())
        record.duration_s = round(duration, 3)
        m = self.metrics
        m.runs.labels(outcome).inc()
        m.last_duration.set(duration)
        if outcome == PUSHED and record.version is not None:
            m.last_pushed_version.set(record.version)
        try:
            self._history.append(record)
        except OSError as err:
            log.error("retrain %s: could not record the outcome: %s", record.run_id, err)
        log.info(
            "retrain %s finished: %s%s in %.1f s",
            record.run_id,
            outcome,
            f" (version {record.version})" if record.version is not None else "",
            duration,
        )

    def _finish(self, record: RunRecord) -> None:
        """Make the finished run the last one and let the next one start."""
        with self._lock:
            self._last = record
            lock_file, self._lock_file = self._lock_file, None
            self.metrics.in_progress.set(0)
            if lock_file is not None:
                RunLock.release(lock_file)
            self._done.set()

    def prepare_job(self, run_id: str, reason: str, as_of: str | None = None) -> RetrainJob:
        """Build the dataset (when this side has to) and the pipeline parameters; ``as_of``
        overrides the config's."""
        import pandas as pd

        cfg = self.config
        as_of = as_of or cfg.as_of
        job_dir = self.run_dir / run_id
        job_dir.mkdir(parents=True, exist_ok=True)
        dataset: dict[str, Any] | None = None
        if cfg.builds_dataset:
            target = Path(cfg.export_path) if cfg.mode == CLUSTER else job_dir / DATASET_FILE
            frame, dataset = write_training_dataset(
                cfg.state_dir, cfg.base_data, as_of, cfg.label_delay_days, target
            )
            windows = _window_params(cfg, as_of or dataset["as_of"])
            source = f"retrain {run_id}"
            dataset.update(checked_windows(frame, windows, cfg.label_delay_days, source))
            data_path = cfg.cluster_data_path if cfg.mode == CLUSTER else str(target)
        else:
            data_path = cfg.cluster_data_path
            # Nothing read here: relative windows end at the submission time.
            windows = _window_params(cfg, as_of or pd.Timestamp.now(tz="UTC").isoformat())
        params = {
            "data_path": data_path,
            **windows,
            "label_delay_days": cfg.label_delay_days,
            "model_base_path": str(cfg.model_base_path),
            "model_name": cfg.model_name,
            **dict(cfg.pipeline_params),
        }
        return RetrainJob(run_id, reason, job_dir, params, dataset)


def _record_result(record: RunRecord, result: Mapping[str, Any]) -> None:
    """What the runner reported (pushed version, gate reasons, KFP run), on the record."""
    version = result.get("version")
    record.version = None if version is None else int(version)
    record.serving = result.get("serving")
    reasons = result.get("reasons")
    record.gate_reasons = list(reasons) if reasons else None
    record.kfp_run_id = result.get("kfp_run_id")
    record.duplicate_of = result.get("duplicate_of")


def _window_params(cfg: RetrainConfig, as_of: str) -> dict[str, Any]:
    """The pipeline's window parameters: the explicit dates, or the days before ``as_of``."""
    if not cfg.explicit_windows:
        return {"as_of": as_of, "train_days": cfg.train_days, "eval_days": cfg.eval_days}
    windows: dict[str, Any] = {
        "train_start": cfg.train_start,
        "train_end": cfg.train_end,
        "eval_start": cfg.eval_start or "",
        "eval_end": cfg.eval_end or "",
    }
    if not cfg.eval_start:
        windows["eval_days"] = cfg.eval_days
    return windows


# --- scheduled retraining -------------------------------------------------------------------------


def run_schedule(
    trigger: RetrainTrigger,
    every_s: float,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    reason: str | None = None,
    max_runs: int | None = None,
) -> list[tuple[TriggerResult, RunRecord | None]]:
    """Trigger now and then every ``every_s`` seconds (from one start to the next; a run longer
    than the period delays the next one), waiting for each run; until ``stop`` is set, after
    one round with ``once``, or after ``max_runs`` rounds."""
    if every_s <= 0 and not once:
        raise ValueError("retrain schedule: the period must be > 0 (or run it once)")
    stop = stop or threading.Event()
    why = reason or (f"scheduled every {format_duration(every_s)}" if not once else "scheduled")
    results: list[tuple[TriggerResult, RunRecord | None]] = []
    while not stop.is_set():
        tick = time.monotonic()
        result = trigger.trigger(why)
        record = trigger.wait() if result.accepted else None
        results.append((result, record))
        if once or (max_runs is not None and len(results) >= max_runs):
            break
        stop.wait(max(0.0, tick + every_s - time.monotonic()))
    return results
