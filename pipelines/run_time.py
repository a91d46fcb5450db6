"""The run's schedule time, given to the compiled pipeline by the project's own runners.

The pipeline hands ``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER`` to the step that picks the
training windows; Kubeflow Pipelines replaces it with each run's scheduled time. kfp.local
cannot resolve it (a task input holding it fails), so every local runner (``run_local``,
``run_steps``, ``ir_runner``) substitutes the run's time into the IR text before running it:
one compiled DAG, one substitution.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kfp import dsl

PLACEHOLDER = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER


def schedule_time_text(when: datetime | None = None) -> str:
    """``when`` (default: now) in UTC, RFC 3339 with a ``Z``, as Kubeflow Pipelines gives it."""
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError(f"run time {when.isoformat()} has no time zone: give it in UTC")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bind_schedule_time(ir_text: str, when: datetime | None = None) -> str:
    """The IR (YAML or JSON text) with every schedule-time placeholder set to ``when``."""
    return ir_text.replace(PLACEHOLDER, schedule_time_text(when))
