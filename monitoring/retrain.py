"""Retraining on fresh data: a single-flight trigger with a cooldown, and scheduled retraining.

``RetrainTrigger.trigger(reason)`` starts one retraining run in a background thread, or refuses
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
* cluster mode: submits the compiled pipeline through ``pipelines.runners.submit`` (kfp.Client),
  with the dataset exported first to a path the cluster reads, when one is configured.

The runner is a plain callable ``runner(job) -> {"pushed": bool, "version": ..., ...}`` (the
pipeline's push result), given by whoever builds the trigger: the ``fraud`` CLI gives the local
or the cluster pipeline runner (``app.retrain_cli``), tests a real, small training function.

Every trigger is appended to ``<run_dir>/history.jsonl``: a ``started`` line, then one with the
outcome (``pushed``, ``not_blessed``, ``failed``, ``submitted``), or a single ``refused`` line.
Metrics: ``monitoring.drift.RetrainMetrics``.

``run_schedule`` runs the trigger on a schedule (``fraud retrain --every 6h``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from core import contract as c
from core.settings import Settings
from monitoring.drift import RetrainMetrics

log = logging.getLogger(__name__)

__all__ = [
    "RetrainConfig",
    "RetrainJob",
    "RetrainMetrics",
    "RetrainTrigger",
    "TriggerResult",
    "Runner",
    "build_training_dataset",
    "parse_duration",
    "run_schedule",
]

HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".retrain.lock"
DATASET_FILE = "dataset.parquet"

# Record statuses; the last four are run outcomes (``fraud_retrain_runs_total{outcome}``).
STARTED, REFUSED = "started", "refused"
PUSHED, NOT_BLESSED, FAILED, SUBMITTED = "pushed", "not_blessed", "failed", "submitted"
# Refusal causes (``fraud_retrain_refused_total{cause}``).
IN_PROGRESS, COOLDOWN = "in_progress", "cooldown"

LOCAL, CLUSTER = "local", "cluster"


# --- durations ------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str | float) -> float:
    """Seconds from '6h', '30m', '1h30m', '2d', '45s' or a plain number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        try:
            seconds = float(s)
        except ValueError:
            parts = _DURATION_PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ValueError(
                    f"duration {text!r}: expected e.g. '6h', '30m', '1h30m', '2d' or seconds"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"duration {text!r}: must be >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the training dataset -------------------------------------------------------------------------


def load_consumed_dataset(state_dir: str | Path) -> Any:
    """What the consumer persisted under ``<state_dir>/dataset``, in the raw schema plus
    ``label_available_at``; transactions without a label yet keep a missing label."""
    from streaming.dataset import load_consumed

    return load_consumed(Path(state_dir), labelled_only=False)


def build_training_dataset(
    consumed: Any | None,
    base: Any | None = None,
    as_of: str | None = None,
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS,
) -> tuple[Any, dict[str, Any]]:
    """The labelled data a retrain may use at ``as_of``: (frame in the raw schema, summary).

    ``consumed``: what ``load_consumed_dataset`` returns (labels may be missing); ``base``: a
    historical labelled file (path, validated on reading) or frame in the raw schema.

    * both are merged and deduplicated by transaction id; a copy with a label known at ``as_of``
      wins over one without, then the base copy over the consumed one;
    * transactions after ``as_of`` (default: the latest event time) are dropped, and so are
      labels that became available after it (a base without ``label_available_at`` gets
      ``timestamp + label_delay_days``, the platform's label delay): no peeking at the future;
    * transactions left without a known label are dropped, because the pipeline trains on
      labelled rows only. With relative windows these all come after the windows' end.
    """
    import pandas as pd

    from core.dataio import read_transactions, sort_stream_order

    columns = [*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]
    frames = []
    info: dict[str, Any] = {"consumed_rows": 0, "base_rows": 0}
    if base is not None:
        base = base.copy() if isinstance(base, pd.DataFrame) else read_transactions(base)
        if c.LABEL_AVAILABLE_AT not in base.columns:
            base[c.LABEL_AVAILABLE_AT] = base[c.TIMESTAMP] + pd.Timedelta(days=label_delay_days)
        missing = [col for col in columns if col not in base.columns]
        if missing:
            raise ValueError(f"base data lacks column(s) {missing} of the raw schema")
        info["base_rows"] = len(base)
        frames.append(base[columns].assign(_src=0))
    if consumed is not None:
        missing = [col for col in columns if col not in consumed.columns]
        if missing:
            raise ValueError(f"consumed data lacks column(s) {missing} of the raw schema")
        info["consumed_rows"] = len(consumed)
        frames.append(consumed[columns].assign(_src=1))
    if not sum(len(f) for f in frames):
        raise ValueError("no training data: nothing consumed and no base data")
    df = pd.concat(frames, ignore_index=True)
    df[c.LABEL] = df[c.LABEL].astype("float64")
    if as_of is None:
        cutoff = df[c.TIMESTAMP].max()
    else:
        cutoff = pd.Timestamp(as_of)
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    future = df[c.TIMESTAMP] > cutoff
    df = df.loc[~future]
    known = df[c.LABEL].notna() & (df[c.LABEL_AVAILABLE_AT] <= cutoff)
    df = df.assign(_known=known)
    df.loc[~known, c.LABEL] = float("nan")
    # One row per transaction: known label first, then the base file's copy.
    df = df.sort_values([c.TRANSACTION_ID, "_known", "_src"], ascending=[True, False, True])
    deduped = df.drop_duplicates(subset=[c.TRANSACTION_ID], keep="first")
    labelled = deduped.loc[deduped["_known"], columns].copy()
    labelled[c.LABEL] = labelled[c.LABEL].astype("int8")
    labelled = sort_stream_order(labelled)
    info.update(
        as_of=cutoff.isoformat(),
        after_as_of=int(future.sum()),
        duplicates=len(df) - len(deduped),
        unlabelled_dropped=int((~deduped["_known"]).sum()),
        rows=len(labelled),
        frauds=int(labelled[c.LABEL].sum()),
        first=labelled[c.TIMESTAMP].min().isoformat() if len(labelled) else None,
        last=labelled[c.TIMESTAMP].max().isoformat() if len(labelled) else None,
    )
    return labelled, info


def check_windows(frame: Any, windows: Any, source: str) -> dict[str, int]:
    """Fail before spending minutes in the pipeline when a window has no rows or no fraud."""
    ts = frame[c.TIMESTAMP]
    counts: dict[str, int] = {}
    for name, lo, hi in (
        ("train", windows.train_start, windows.train_end),
        ("eval", windows.eval_start, windows.eval_end),
    ):
        part = frame.loc[(ts >= lo) & (ts < hi)]
        counts[f"{name}_rows"], counts[f"{name}_frauds"] = len(part), int(part[c.LABEL].sum())
        if part.empty or not part[c.LABEL].any():
            raise ValueError(
                f"{source}: the {name} window [{lo}, {hi}) has {len(part)} labelled "
                f"transactions and {counts[f'{name}_frauds']} frauds: not enough to retrain "
                "(more history needed, or other windows)"
            )
    return counts


# --- configuration, jobs, runners -----------------------------------------------------------------


@dataclass(frozen=True)
class RetrainConfig:
    run_dir: Path = Path("runs/retrain")
    mode: str = LOCAL
    # No new run within this many seconds of the last start (failed runs included: a broken
    # setup must not retrain in a loop).
    cooldown_s: float = 6 * 3_600
    # Data: the consumer's --state-dir and a historical labelled file (raw schema).
    state_dir: Path | None = None
    base_data: Path | None = None
    # Windows: relative to as_of (None = the latest event time in the data) ...
    as_of: str | None = None
    train_days: int = 28
    eval_days: int = 7
    # ... or explicit dates (train_start and train_end set: relative windows are not used).
    train_start: str | None = None
    train_end: str | None = None
    eval_start: str | None = None
    eval_end: str | None = None
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    model_base_path: Path = Settings().model_base_path
    model_name: str = Settings().model_name
    # Any other pipeline parameter (epochs, min_auc, review_budget, ...).
    pipeline_params: Mapping[str, Any] = field(default_factory=dict)
    # Cluster mode: KFP endpoint, and the dataset path as the pipeline's pods see it. With
    # export_path, the merged dataset is written there first (a volume the cluster mounts).
    host: str | None = None
    experiment: str = "fraud"
    package: Path | None = None
    cluster_data_path: str | None = None
    export_path: Path | None = None
    wait_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in (LOCAL, CLUSTER):
            raise ValueError(f"retrain: mode must be {LOCAL!r} or {CLUSTER!r}, got {self.mode!r}")
        if self.cooldown_s < 0:
            raise ValueError(f"retrain: cooldown must be >= 0, got {self.cooldown_s}")
        if bool(self.train_start) != bool(self.train_end):
            raise ValueError("retrain: give both train_start and train_end, or neither")
        if not self.train_start and (self.train_days <= 0 or self.eval_days <= 0):
            raise ValueError("retrain: relative windows need train_days > 0 and eval_days > 0")
        if self.mode == LOCAL and self.state_dir is None and self.base_data is None:
            raise ValueError("retrain: local mode needs a state_dir (consumed data) or base_data")
        if self.mode == CLUSTER:
            if not self.host:
                raise ValueError("retrain: cluster mode needs the KFP host")
            if not (self.cluster_data_path or self.export_path):
                raise ValueError(
                    "retrain: cluster mode needs cluster_data_path (the dataset as the "
                    "pipeline pods see it) or export_path (where to write it for them)"
                )

    @property
    def explicit_windows(self) -> bool:
        return bool(self.train_start)


@dataclass(frozen=True)
class RetrainJob:
    """What a runner gets: pipeline parameters and a private directory for its artifacts."""

    run_id: str
    reason: str
    run_dir: Path
    params: dict[str, Any]
    dataset: dict[str, Any] | None = None


Runner = Callable[[RetrainJob], Mapping[str, Any]]


def _outcome(result: Mapping[str, Any]) -> str:
    pushed = result.get("pushed")
    if pushed is True:
        if result.get("version") is None:
            raise ValueError(f"runner reported a push without a version: {dict(result)}")
        return PUSHED
    if pushed is False:
        return NOT_BLESSED
    if result.get("kfp_run_id"):
        return SUBMITTED
    raise ValueError(f"runner result says neither pushed nor submitted: {dict(result)}")


@dataclass(frozen=True)
class TriggerResult:
    accepted: bool
    reason: str
    run_id: str | None = None
    refused: str | None = None  # IN_PROGRESS | COOLDOWN
    message: str = ""


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
    gate_reasons: list[str] | None = None
    error: str | None = None
    cause: str | None = None
    message: str | None = None
    params: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    kfp_run_id: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def to_json(self) -> str:
        return json.dumps(
            {k: v for k, v in asdict(self).items() if v is not None}, default=str, sort_keys=True
        )


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
        self.history_path = self.run_dir / HISTORY_FILE
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
        starts = [
            r["started_at_unix"]
            for r in self.history()
            if r.get("status") == STARTED and r.get("started_at_unix") is not None
        ]
        return max(starts) if starts else None

    def cooldown_until(self) -> float | None:
        last = self.last_start()
        return None if last is None else last + self.config.cooldown_s

    def history(self) -> list[dict[str, Any]]:
        """Every record, oldest first (unreadable lines, e.g. a torn last line, are skipped)."""
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("%s:%d: unreadable history line skipped", self.history_path, i)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """The latest record of each run, in start order (a run that only has ``started`` was
        in progress, or its process died)."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self.history():
            if record.get("run_id"):
                latest[record["run_id"]] = record
        return list(latest.values())

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = asdict(self._current) if self._current and self.in_progress else None
            last = asdict(self._last) if self._last else None
        until = self.cooldown_until()
        return {
            "in_progress": current is not None,
            "current": current,
            "last": last,
            "cooldown_until": _iso(until),
            "cooling_down": until is not None and self.clock() < until,
        }

    # -- triggering --------------------------------------------------------------------------------
    def trigger(self, reason: str) -> TriggerResult:
        """Start a run in the background, or refuse; never blocks on training."""
        now = self.clock()
        with self._lock:
            if self.in_progress:
                assert self._current is not None
                return self._refuse(
                    reason,
                    IN_PROGRESS,
                    f"run {self._current.run_id} in progress since {self._current.started_at}",
                    now,
                )
            lock_file = self._try_file_lock()
            if lock_file is None:
                return self._refuse(
                    reason,
                    IN_PROGRESS,
                    f"another process holds {self.run_dir / LOCK_FILE} (a run is in progress)",
                    now,
                )
            try:
                last = self.last_start()
                if last is not None and now < last + self.config.cooldown_s:
                    _release(lock_file)
                    return self._refuse(
                        reason,
                        COOLDOWN,
                        f"last run started at {_iso(last)}; cooldown of "
                        f"{format_duration(self.config.cooldown_s)} lasts until "
                        f"{_iso(last + self.config.cooldown_s)}",
                        now,
                    )
                run_id = (
                    f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
                )
                record = RunRecord(
                    status=STARTED,
                    reason=reason,
                    run_id=run_id,
                    mode=self.config.mode,
                    requested_at=_iso(now),
                    requested_at_unix=now,
                    started_at=_iso(now),
                    started_at_unix=now,
                )
                self._append(record)
            except BaseException:
                _release(lock_file)
                raise
            self._lock_file = lock_file
            self._current = record
            self._done.clear()
            self.metrics.runs.labels(STARTED).inc()
            self.metrics.in_progress.set(1)
            log.info("retrain %s started (%s mode): %s", run_id, self.config.mode, reason)
            self._thread = threading.Thread(
                target=self._execute, args=(record,), name=f"retrain-{run_id}", daemon=True
            )
            self._thread.start()
        return TriggerResult(True, reason, run_id=run_id, message=f"started run {run_id}")

    def wait(self, timeout: float | None = None) -> RunRecord | None:
        """Block until the current run (if any) finishes; returns the last finished record."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"retrain run still going after {timeout} s")
        with self._lock:
            return self._last

    def _refuse(self, reason: str, cause: str, message: str, now: float) -> TriggerResult:
        log.info("retrain refused (%s): %s; trigger reason: %s", cause, message, reason)
        self.metrics.refused.labels(cause).inc()
        self._append(
            RunRecord(
                status=REFUSED,
                reason=reason,
                mode=self.config.mode,
                requested_at=_iso(now),
                requested_at_unix=now,
                cause=cause,
                message=message,
            )
        )
        return TriggerResult(False, reason, refused=cause, message=message)

    def _try_file_lock(self) -> IO[str] | None:
        # flock is per open file: it excludes other processes and other trigger objects alike,
        # and the kernel drops it when a process dies, so a crash never leaves a stale lock.
        f = open(self.run_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the run, see _release
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    def _append(self, record: RunRecord) -> None:
        # One write of one line in append mode: concurrent writers never interleave inside it.
        with open(self.history_path, "a") as f:
            f.write(record.to_json() + "\n")

    # -- the run -----------------------------------------------------------------------------------
    def _execute(self, record: RunRecord) -> None:
        started = time.monotonic()
        outcome = FAILED
        try:
            job = self.prepare_job(record.run_id or "", record.reason)
            record.params, record.dataset = job.params, job.dataset
            result = self.runner(job)
            outcome = _outcome(result)
            version = result.get("version")
            record.version = None if version is None else int(version)
            reasons = result.get("reasons")
            record.gate_reasons = list(reasons) if reasons else None
            record.kfp_run_id = result.get("kfp_run_id")
        except Exception as err:  # every failure is an outcome to record, not a crash
            record.error = f"{type(err).__name__}: {err}"
            log.exception("retrain %s failed", record.run_id)
        finally:
            duration = time.monotonic() - started
            record.status = outcome
            record.ended_at = _iso(self.clock())
            record.duration_s = round(duration, 3)
            m = self.metrics
            m.runs.labels(outcome).inc()
            m.last_duration.set(duration)
            if outcome == PUSHED and record.version is not None:
                m.last_pushed_version.set(record.version)
            try:
                self._append(record)
            except OSError as err:
                log.error("retrain %s: could not record the outcome: %s", record.run_id, err)
            log.info(
                "retrain %s finished: %s%s in %.1f s",
                record.run_id,
                outcome,
                f" (version {record.version})" if record.version is not None else "",
                duration,
            )
            with self._lock:
                self._last = record
                lock_file, self._lock_file = self._lock_file, None
                m.in_progress.set(0)
                if lock_file is not None:
                    _release(lock_file)
                self._done.set()

    def prepare_job(self, run_id: str, reason: str) -> RetrainJob:
        """Build the dataset (when this side has to) and the pipeline parameters."""
        import pandas as pd

        from core.dataio import write_transactions
        from core.windows import resolve_windows

        cfg = self.config
        job_dir = self.run_dir / run_id
        job_dir.mkdir(parents=True, exist_ok=True)
        dataset_info: dict[str, Any] | None = None
        as_of = cfg.as_of
        if cfg.mode == LOCAL or cfg.export_path is not None:
            consumed = None
            if cfg.state_dir is not None and (Path(cfg.state_dir) / "dataset").exists():
                consumed = load_consumed_dataset(cfg.state_dir)
            elif cfg.base_data is None:
                raise ValueError(
                    f"no training data: {cfg.state_dir}/dataset does not exist (has the consumer "
                    "run with this --state-dir?) and no base data is configured"
                )
            frame, dataset_info = build_training_dataset(
                consumed, cfg.base_data, cfg.as_of, cfg.label_delay_days
            )
            target = Path(cfg.export_path) if cfg.mode == CLUSTER else job_dir / DATASET_FILE
            write_transactions(frame, target)
            dataset_info["path"] = str(target)
            as_of = as_of or dataset_info["as_of"]
            data_path = cfg.cluster_data_path if cfg.mode == CLUSTER else str(target)
        else:
            frame = None
            data_path = cfg.cluster_data_path
            # Nothing read here: relative windows end at the submission time.
            as_of = as_of or pd.Timestamp.now(tz="UTC").isoformat()
        if cfg.explicit_windows:
            windows = {
                "train_start": cfg.train_start,
                "train_end": cfg.train_end,
                "eval_start": cfg.eval_start or "",
                "eval_end": cfg.eval_end or "",
            }
            if not cfg.eval_start:
                windows["eval_days"] = cfg.eval_days
        else:
            windows = {"as_of": as_of, "train_days": cfg.train_days, "eval_days": cfg.eval_days}
        if frame is not None:
            resolved = resolve_windows(
                label_delay_days=cfg.label_delay_days,
                **{k: v for k, v in windows.items() if v != ""},
            )
            assert dataset_info is not None
            dataset_info["windows"] = resolved.as_strings()
            dataset_info.update(check_windows(frame, resolved, f"retrain {run_id}"))
        params = {
            "data_path": data_path,
            **windows,
            "label_delay_days": cfg.label_delay_days,
            "model_base_path": str(cfg.model_base_path),
            "model_name": cfg.model_name,
            **dict(cfg.pipeline_params),
        }
        return RetrainJob(run_id, reason, job_dir, params, dataset_info)


def _release(f: IO[str]) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()


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
