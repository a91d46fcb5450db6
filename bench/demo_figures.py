"""The `make run` figures of README.md's benchmark table, read from a demo run's summary.

    python -m bench.demo_figures [RUN_DIR] [--results FILE | --no-record]

RUN_DIR is a ``fraud demo`` run directory (default: the one under runs/ whose summary.json was
written last); its ``summary.json`` (``app.demo.run_demo`` writes it) gives the wall time, the
drift detection delay, the retrain-to-serving time, the retrained model's AP ratio and the p99
latency. ``make run`` calls this after the demo, so each run refreshes those rows. The figures
are dated by the run's ``finished_at`` and attributed to this machine (the one the run was on).

A summary without one of the fields, or with a field of the wrong type, is refused with the file
and the field named, and nothing is recorded: a null figure (drift not detected, no retrain)
is a run that did not show what the README claims, not a figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from app.demo import SUMMARY
from bench import results

RUNS = results.REPO / "runs"
COMMAND = "make run"
TARGET_DETECTION_H = 24.0


class SummaryError(ValueError):
    """A demo summary this module cannot use; the message names the file and the field."""


def latest_run(runs: Path = RUNS) -> Path:
    """The run directory under ``runs`` whose summary was written last."""
    summaries = sorted(runs.glob(f"*/{SUMMARY}"), key=lambda p: p.stat().st_mtime)
    if not summaries:
        raise SummaryError(f"no {runs}/*/{SUMMARY}: run `make run` first, or name a run directory")
    return summaries[-1].parent


def load_summary(path: Path) -> dict[str, Any]:
    """The JSON object of a demo's summary file."""
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise SummaryError(
            f"{path}: no such file (fraud demo writes it at the end of a run)"
        ) from err
    except json.JSONDecodeError as err:
        raise SummaryError(f"{path}: not JSON ({err})") from err
    if not isinstance(summary, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary


class _Fields:
    """Typed access to a summary's fields, each failure naming the file and the field."""

    def __init__(self, summary: dict[str, Any], path: Path) -> None:
        self.summary, self.path = summary, path

    def get(self, field: str) -> Any:
        """The value at ``field``: dotted keys, ``[i]`` list items (``phases[-1].name``)."""
        value: Any = self.summary
        for part in field.replace("[", ".[").split("."):
            if part.startswith("["):
                index = int(part[1:-1])
                if not isinstance(value, list) or not -len(value) <= index < len(value):
                    raise self.error(field, f"has no item {index}")
                value = value[index]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise self.error(field, "is missing")
        return value

    def number(self, field: str) -> float:
        value = self.get(field)
        if value is None:
            raise self.error(field, "is null: this run did not produce that figure")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"must be a number, got {value!r}")
        return float(value)

    def date(self, field: str) -> str:
        value = self.get(field)
        try:
            return dt.datetime.fromisoformat(value).date().isoformat()
        except (TypeError, ValueError) as err:
            raise self.error(field, f"must be an ISO 8601 time, got {value!r}") from err

    def error(self, field: str, problem: str) -> SummaryError:
        return SummaryError(f"{self.path}: field {field!r} {problem}")


def figures(summary: dict[str, Any], path: Path) -> list[results.Figure]:
    """The `make run` rows of one run's ``summary`` (read from ``path``, named in errors)."""
    s = _Fields(summary, path)
    # Phases in the order app.demo_report.phases makes them: the first model before the drift,
    # the first model after it, then each retrained version.
    phases = s.get("phases")
    if not isinstance(phases, list) or len(phases) < 3:
        raise s.error(
            "phases",
            f"must list the phases before the drift, after it and after a retrain, got {phases!r}",
        )
    before, drifted, retrained = (s.number(f"phases[{i}].average_precision") for i in (0, 1, -1))
    date, machine = s.date("finished_at"), results.this_machine()

    def figure(
        name: str,
        label: str,
        field: str,
        unit: str,
        meaning: str,
        target: results.Target | None = None,
        detail: str = "",
    ) -> results.Figure:
        value = s.number(field)
        return results.Figure(
            f"demo.{name}", label, value, unit, meaning, target, date, machine, COMMAND, detail
        )

    return [
        figure(
            "total_seconds",
            "`make run` end to end",
            "timings.total_s",
            "s",
            "wall seconds of fraud demo: simulate, DVC, first model, stream, drift, retrain, report",
            detail=f"{s.number('scored'):,.0f} transactions scored at "
            f"{s.number('throughput'):,.0f} tx/s, {s.number('duplicates'):,.0f} duplicate decisions",
        ),
        figure(
            "detection_hours",
            "`make run`: drift detected after the onset",
            "detection_delay_h",
            "h",
            "simulated hours from the drift onset to the first drift event",
            target=results.Target("<=", TARGET_DETECTION_H),
            detail=f"{s.number('false_alarms_before_onset'):.0f} alarms before the onset",
        ),
        figure(
            "retrain_to_serving_seconds",
            "`make run`: retrain trigger to the new version serving",
            "trigger_to_serving_s",
            "s",
            "wall seconds from the retrain trigger to decisions by the new version",
        ),
        figure(
            "retrained_ap_ratio",
            "`make run`: retrained AP / first model's AP before the drift",
            "recovery_ratio",
            "x",
            "average precision of the retrained version on the traffic it scored ÷ that of the "
            "first model before the drift onset",
            detail=f"{retrained:.3f} / {before:.3f}; the first model after the drift {drifted:.3f}",
        ),
        figure(
            "p99_ms",
            "`make run`: p99 end-to-end latency",
            "p99_ms",
            "ms",
            "transaction's Kafka timestamp to its decision produced, over the whole stream",
            detail=f"p50 {s.number('p50_ms'):.1f} ms; "
            f"{s.number('p99_ms_outside_retrain'):.1f} ms outside the retrain",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.demo_figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir", nargs="?", type=Path, help="a fraud demo run directory (default: the latest)"
    )
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        path = (args.run_dir or latest_run()) / SUMMARY
        recorded = figures(load_summary(path), path)
    except SummaryError as err:
        print(f"bench.demo_figures: {err}", file=sys.stderr)
        return 1
    for f in recorded:
        print(f"{f.label}: {f.value_text()}" + (f" ({f.detail})" if f.detail else ""))
    results.publish(args, recorded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
