"""``bench.demo_figures``: the README's `make run` rows, recorded from a demo run's summary."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.demo import SUMMARY
from bench import demo_figures, results

# A summary.json as app.demo.run_demo writes it (a real run's, its retrain records shortened).
RUN_SUMMARY: dict[str, Any] = {
    "scored": 256067,
    "duplicates": 0,
    "replayed": 256067,
    "throughput": 1012.7629440872882,
    "p50_ms": 33.127,
    "p99_ms": 122.632,
    "p50_ms_outside_retrain": 33.151,
    "p99_ms_outside_retrain": 112.31871999999834,
    "alerts": 5150,
    "phases": [
        {
            "name": "before drift (first model)",
            "rows": 29382,
            "frauds": 310,
            "average_precision": 0.7278546795348381,
            "version": "1",
        },
        {
            "name": "after drift, first model",
            "rows": 61388,
            "frauds": 5295,
            "average_precision": 0.5695338422061902,
            "version": "1",
        },
        {
            "name": "after retrain (version 2)",
            "rows": 52628,
            "frauds": 4626,
            "average_precision": 0.9497475703099054,
            "version": "2",
        },
    ],
    "onset": "2025-03-27T00:00:00Z",
    "false_alarms_before_onset": 0,
    "detected_at": "2025-03-27T04:59:49Z",
    "detection_delay_h": 4.996944444444445,
    "trigger_to_serving_s": 88.587931,
    "recovery_ratio": 1.3048587815865607,
    "versions": ["1", "2"],
    "retrains": [
        {"run_id": "20261206T030411Z-9ce32b", "status": "started", "mode": "local"},
        {"run_id": "20261206T030411Z-9ce32b", "status": "pushed", "version": 2},
    ],
    "table": "transactions scored  256,067",
    "report": "runs/demo-20261206-030030/report.html",
    "timings": {
        "dvc_repro_s": 21.5,
        "first_pipeline_s": 61.0,
        "replay_s": 251.2,
        "total_s": 364.3,
    },
    "finished_at": "2026-12-06T03:06:12Z",
}


def write_run(run_dir: Path, summary: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return run_dir


def test_a_run_summary_records_the_make_run_rows(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "demo-1", RUN_SUMMARY)
    path = tmp_path / "results.json"
    assert demo_figures.main([str(run_dir), "--results", str(path)]) == 0
    recorded = {f.name: f for f in results.load(path)}
    assert {name: f.value for name, f in recorded.items()} == {
        "demo.total_seconds": 364.3,
        "demo.detection_hours": 4.996944444444445,
        "demo.retrain_to_serving_seconds": 88.587931,
        "demo.retrained_ap_ratio": 1.3048587815865607,
        "demo.p99_ms": 122.632,
    }
    assert {f.command for f in recorded.values()} == {"make run"}
    assert {f.date for f in recorded.values()} == {"2026-12-06"}
    details = {name: f.detail for name, f in recorded.items()}
    assert details["demo.total_seconds"] == (
        "256,067 transactions scored at 1,013 tx/s, 0 duplicate decisions"
    )
    assert details["demo.detection_hours"] == "0 alarms before the onset"
    assert details["demo.retrained_ap_ratio"] == (
        "0.950 / 0.728; the first model after the drift 0.570"
    )
    assert details["demo.p99_ms"] == "p50 33.1 ms; 112.3 ms outside the retrain"
    assert recorded["demo.detection_hours"].target_text() == "≤ 24 h: met"


def test_every_make_run_row_is_one_a_run_rewrites(tmp_path: Path) -> None:
    """A `make run` row the command does not record would never be refreshed."""
    produced = {f.name for f in demo_figures.figures(RUN_SUMMARY, tmp_path / SUMMARY)}
    seeded = {f.name for f in results.load(results.RESULTS) if f.command == "make run"}
    assert seeded == produced


def test_without_a_run_dir_the_latest_summary_is_read(tmp_path: Path) -> None:
    old = write_run(tmp_path / "runs" / "b-older", {"scored": "old"})
    new = write_run(tmp_path / "runs" / "a-newer", RUN_SUMMARY)
    os.utime(old / SUMMARY, (1_000, 1_000))
    assert demo_figures.latest_run(tmp_path / "runs") == new
    with pytest.raises(demo_figures.SummaryError, match="no .*/summary.json: run `make run`"):
        demo_figures.latest_run(tmp_path / "nothing")


def _broken(field: str, value: Any) -> dict[str, Any]:
    """RUN_SUMMARY with ``field`` (``a.b`` or ``phases.i.key``) set to ``value`` (deleted when
    ``value`` is ``KeyError``)."""
    summary = copy.deepcopy(RUN_SUMMARY)
    *parents, last = field.split(".")
    node: Any = summary
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return summary


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        (_broken("timings.total_s", KeyError), "field 'timings.total_s' is missing"),
        (_broken("timings", KeyError), "field 'timings.total_s' is missing"),
        (_broken("p99_ms", "fast"), "field 'p99_ms' must be a number, got 'fast'"),
        (_broken("throughput", True), "field 'throughput' must be a number, got True"),
        (_broken("detection_delay_h", None), "field 'detection_delay_h' is null"),
        (_broken("phases.2.average_precision", None), "'phases[-1].average_precision' is null"),
        (_broken("phases", RUN_SUMMARY["phases"][:2]), "field 'phases' must list the phases"),
        (_broken("finished_at", "yesterday"), "'finished_at' must be an ISO 8601 time"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_a_malformed_summary_is_refused_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], summary: Any, message: str
) -> None:
    run_dir = write_run(tmp_path / "demo-1", summary)
    path = tmp_path / "results.json"
    assert demo_figures.main([str(run_dir), "--results", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(run_dir / SUMMARY) in err
    assert message in err
    assert not path.exists()  # nothing recorded


def test_an_unreadable_summary_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / SUMMARY
    with pytest.raises(demo_figures.SummaryError, match=f"{path}: no such file"):
        demo_figures.load_summary(path)
    path.write_text("{not json")
    with pytest.raises(demo_figures.SummaryError, match=f"{path}: not JSON"):
        demo_figures.load_summary(path)
