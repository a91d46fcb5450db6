"""Drift monitoring and the retraining trigger, as the consumer runs them after each batch.

``DriftLoop`` is the glue between the consumer and two self-contained parts:
``monitoring.drift.DriftMonitor`` (windowed drift statistics) and
``monitoring.retrain.RetrainTrigger`` (single-flight retraining), and feeds every decision and
label to an optional ``monitoring.quality.QualityMonitor``. Its policy:

* features are only compared once the consumer's feature state covers the longest window
  (``warmup_s`` of event time after the first transaction it saw): before that, window counts are
  low by construction and would read as drift;
* sustained drift (N drifting windows in a row) schedules a retrain; it starts once the event
  clock has passed the first drifting window by ``label_wait_s``. A retrain's windows end
  label_delay before its as_of, so starting at detection would train and evaluate on data that
  holds no labelled example of what changed;
* each window's statistics go to a JSON-lines log; threshold crossings go to the drift-events
  topic (via the ``publish`` callable) with the features involved;
* its state (the monitor's windows, streak and label join, the warm-up clock and a scheduled
  retrain) is saved to ``state_path`` every ``save_interval_s`` and by ``save()`` at shutdown,
  and taken back at start when the same model version still answers: a restart does not blind
  the monitor for a window (a day, with daily windows). A crash loses at most the interval.
  The file is data only (``core.statefile``): reading it never runs code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import contract as c
from core import statefile
from core.metadata import ModelMetadata
from monitoring.drift_events import iso_utc

log = logging.getLogger(__name__)

_STATE_FORMAT = "fraud-drift-state"
# Bumped whenever the document's fields change: a file of another version is refused.
_STATE_VERSION = 3
_REMEDY = "move it away to start the monitor afresh"
# How the reason of a drift-triggered retrain starts (monitoring.canary tells such versions by it).
DRIFT_REASON = "sustained drift"


@dataclass(frozen=True)
class DriftLoopConfig:
    model_base_path: Path
    windows_log: Path
    # The longest customer window, or the terminal windows shifted by the label delay.
    warmup_s: float = c.DEFAULT_LABEL_DELAY_DAYS * c.SECONDS_PER_DAY + max(
        c.TERMINAL_WINDOWS.values()
    )
    # label delay + evaluation days + days of the new behaviour to learn from
    label_wait_s: float = (c.DEFAULT_LABEL_DELAY_DAYS + 7 + 7) * c.SECONDS_PER_DAY
    # None: the state is not kept across restarts.
    state_path: Path | None = None
    save_interval_s: float = 60.0


class DriftLoop:
    def __init__(
        self,
        config: DriftLoopConfig,
        drift_config: Any,
        metrics: Any,
        trigger: Any | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        quality: Any | None = None,
    ):
        self.config = config
        self.drift_config = drift_config
        self.metrics = metrics
        self.trigger = trigger
        self.publish = publish
        self.quality = quality
        self.monitor: Any | None = None
        self._first_event: float | None = None
        self._last_window = -1
        self._pending: tuple[str, float] | None = None  # (reason, due event time)
        self._streak_start: float | None = None
        self.triggers: list[dict[str, Any]] = []
        config.windows_log.parent.mkdir(parents=True, exist_ok=True)
        self._saved: dict[str, Any] | None = self._load()
        self._last_save = time.monotonic()

    # -- persistence ---------------------------------------------------------------------------
    _LOOP_FIELDS = ("_first_event", "_last_window", "_pending", "_streak_start", "triggers")

    def _load(self) -> dict[str, Any] | None:
        path = self.config.state_path
        if path is None or not path.exists():
            return None
        saved = statefile.loads(
            path.read_bytes(), _STATE_FORMAT, _STATE_VERSION, str(path), _REMEDY
        )
        missing = [name for name in ("monitor", *self._LOOP_FIELDS) if name not in saved]
        if missing:
            raise statefile.StateFileError(
                f"{path}: {_STATE_FORMAT} document without {', '.join(missing)}: {_REMEDY}"
            )
        if saved["_pending"] is not None:  # a tuple in the loop, an array in JSON
            with statefile.reading(str(path), _STATE_FORMAT, _REMEDY):
                reason, due = saved["_pending"]
                saved["_pending"] = (str(reason), float(due))
        return saved

    def save(self) -> None:
        """Write the state now (atomically); a no-op without ``state_path``."""
        path = self.config.state_path
        self._last_save = time.monotonic()
        if path is None or self.monitor is None:
            return
        body = {
            "monitor": self.monitor.state(),
            **{name: getattr(self, name) for name in self._LOOP_FIELDS},
        }
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(statefile.dumps(statefile.stamp(_STATE_FORMAT, _STATE_VERSION, body)))
        os.replace(tmp, path)

    def _take_saved(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None or self.monitor is None:
            return
        # The warm-up is about the feature state, which the consumer restores whatever model
        # answers: without this, every restart would blind the monitor for the warm-up again.
        self._first_event = saved["_first_event"]
        path = str(self.config.state_path)
        with statefile.reading(path, _STATE_FORMAT, _REMEDY):
            restored = self.monitor.restore_state(saved["monitor"])
        if not restored:
            log.info(
                "drift: saved state is for model version %s, not %s: starting afresh",
                saved["monitor"].get("model_version"),
                self.monitor.model_version,
            )
            return
        for name in self._LOOP_FIELDS:
            setattr(self, name, saved[name])
        log.info(
            "drift: resumed at window %d (%d in a row drifting) from %s",
            self.monitor.window_index,
            self.monitor.consecutive,
            self.config.state_path,
        )

    def _ensure_monitor(self, version: int) -> bool:
        from monitoring.drift import DriftMonitor

        if self.monitor is not None and self.monitor.model_version == version:
            return True
        try:
            metadata = ModelMetadata.read(Path(self.config.model_base_path) / str(version))
        except FileNotFoundError as err:
            # Without the served version's training statistics there is nothing to compare
            # against; scoring goes on, and the next batch tries again.
            log.warning("drift: %s", err)
            return False
        if self.monitor is None:
            self.monitor = DriftMonitor(metadata, self.drift_config, self.metrics)
            if self._saved is not None:
                self._take_saved()
                log.info("drift: monitoring against model version %s", version)
                return True
        else:
            self.monitor.switch_model(metadata)
        # A new model means a new reference: drift of the old one must not retrain the new one.
        self._pending = None
        self._streak_start = None
        log.info("drift: monitoring against model version %s", version)
        return True

    def observe(
        self,
        version: int | str,
        inputs: dict[str, Sequence[float]],
        scores: Sequence[float],
        decisions: Sequence[str],
        event_times: Sequence[int],
        transaction_ids: Sequence[str],
    ) -> list[Any]:
        """Feed one decided batch; returns the drift events it closed."""
        if self.quality is not None:
            # Quality is judged on every decision: the warm-up only concerns feature windows.
            self.quality.observe(version, inputs, scores, decisions, event_times, transaction_ids)
        times = np.asarray(event_times, dtype=np.int64)
        if not len(times) or not self._ensure_monitor(int(version)):
            return []
        if self._first_event is None:
            self._first_event = float(times.min())
        keep = times >= self._first_event + self.config.warmup_s
        events: list[Any] = []
        if keep.any():
            idx = np.flatnonzero(keep)
            events = self.monitor.update(
                {name: np.asarray(inputs[name], dtype=np.float64)[idx] for name in inputs},
                np.asarray(scores, dtype=np.float64)[idx],
                [decisions[i] for i in idx],
                event_times=times[idx],
                transaction_ids=[transaction_ids[i] for i in idx],
            )
        self._log_window()
        for event in events:
            message = event.to_message()
            # The monitor logs each change of drift state; the full events are on the topic.
            log.debug("drift: %s", json.dumps(message, default=str))
            if self.publish is not None:
                self.publish(message)
            if self._streak_start is None and event.window_start is not None:
                self._streak_start = float(event.window_start)
        report = self.monitor.last_report
        if report is not None and not report.drifting:
            self._streak_start = None
        if (
            self.monitor.retrain_due
            and self._pending is None
            and self.trigger is not None
            and not self._trigger_busy()
        ):
            onset = self._streak_start if self._streak_start is not None else float(times.max())
            reason = (
                f"{DRIFT_REASON}: {self.drift_config.sustained_windows} windows in a row since "
                f"event time {iso_utc(onset)} (last window {report.window if report else '?'})"
            )
            self._pending = (reason, onset + self.config.label_wait_s)
            log.warning(
                "drift: retrain scheduled for event time %s: %s", iso_utc(self._pending[1]), reason
            )
        if self._pending is not None and float(times.max()) >= self._pending[1]:
            reason, due = self._pending
            self._pending = None
            # The windows end where the retrain was due, not at whatever event time this batch
            # reached: the same event gives the same run parameters on every replica and restart.
            result = self.trigger.trigger(reason, as_of=iso_utc(due))
            record = {
                "reason": reason,
                "event_time": iso_utc(float(times.max())),
                "result": repr(result),
            }
            self.triggers.append(record)
            log.warning("drift: retrain trigger: %s", record)
        if time.monotonic() - self._last_save >= self.config.save_interval_s:
            self.save()
        return events

    def _trigger_busy(self) -> bool:
        """A run in progress or cooling down: asking again would only be refused. With hourly
        windows a sustained drift is due every hour, and the demo's history filled with ~90
        refusals during one retrain."""
        current = self.trigger.status()
        return bool(current["in_progress"] or current["cooling_down"])

    def add_labels(self, labels: Any) -> None:
        if self.monitor is not None:
            self.monitor.add_labels(labels)
        if self.quality is not None:
            self.quality.add_labels(labels)

    def _log_window(self) -> None:
        if self.monitor is None:
            return
        new = [r for r in self.monitor.reports if r.window > self._last_window]
        if new:
            self._last_window = new[-1].window
        with self.config.windows_log.open("a") as fh:
            for report in new:
                fh.write(json.dumps(self._record(report)) + "\n")

    def _record(self, report: Any) -> dict[str, Any]:
        return {
            "window": report.window,
            "model_version": self.monitor.model_version,
            "start_time": iso_utc(report.window_start),
            "end_time": iso_utc(report.window_end),
            "transactions": report.transactions,
            "alert_rate": report.alert_rate,
            "alert_rate_ratio": report.alert_ratio,
            "drifting": report.drifting,
            **{f"psi_{k}": v for k, v in report.psi.items()},
            **{f"js_{k}": v for k, v in report.js_distance.items()},
            **{f"night_z_{k}": v for k, v in report.night_excess_z.items()},
        }
