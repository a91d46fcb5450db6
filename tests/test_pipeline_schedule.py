"""Scheduled runs: a run given no ``as_of`` and no dates trains on the relative windows that end
at its own schedule time, which the local runners put where the compiled IR holds Kubeflow's
schedule-time placeholder (pipelines/run_time.py).

Two in-process runs of the pipeline's IR (``run_steps``), a week apart, on the same data: each
pushed model records the windows it was trained and evaluated on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from core import contract as c
from core.dataio import write_transactions
from core.metadata import ModelMetadata
from core.simulator import SimulationConfig, simulate

pytestmark = pytest.mark.slow

TRAIN_DAYS, EVAL_DAYS = 21, 7
RUN_TIMES = (datetime(2025, 3, 20, 2, 30, tzinfo=UTC), datetime(2025, 3, 27, 2, 30, tzinfo=UTC))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "transactions.parquet"
    frame = simulate(SimulationConfig(n_customers=400, n_terminals=800, n_days=90, seed=11))
    write_transactions(frame, path)
    return path


def expected_windows(run_time: datetime) -> dict[str, str]:
    end = pd.Timestamp(run_time).normalize() - pd.Timedelta(days=c.DEFAULT_LABEL_DELAY_DAYS)
    day = pd.Timedelta(days=1)
    split = end - EVAL_DAYS * day
    bounds = {
        "train_start": split - TRAIN_DAYS * day,
        "train_end": split,
        "eval_start": split,
        "eval_end": end,
    }
    return {key: value.isoformat() for key, value in bounds.items()}


def test_two_runs_at_different_times_train_on_different_windows(
    data_file: Path, tmp_path: Path
) -> None:
    from pipelines.runners import run_steps

    windows = []
    for i, run_time in enumerate(RUN_TIMES):
        params = {
            "data_path": str(data_file),
            "train_days": TRAIN_DAYS,
            "eval_days": EVAL_DAYS,
            "model_base_path": str(tmp_path / f"models-{i}" / "fraud"),
            "epochs": 1,
            "min_auc": 0.0,
            "min_average_precision": 0.0,
        }
        result = run_steps(params, tmp_path / f"work-{i}", run_time=run_time)
        assert result["pushed"], result
        windows.append(ModelMetadata.read(Path(result["path"])).windows)
        train = pd.read_parquet(tmp_path / f"work-{i}" / "ingest" / "train_data")
        assert train[c.TIMESTAMP].min() >= pd.Timestamp(expected_windows(run_time)["train_start"])
        assert train[c.TIMESTAMP].max() < pd.Timestamp(expected_windows(run_time)["train_end"])
    assert windows == [expected_windows(t) for t in RUN_TIMES]
    assert windows[0] != windows[1]


def test_a_run_without_a_substituted_schedule_time_names_it() -> None:
    from components.ingest.job import with_schedule_time
    from pipelines.run_time import PLACEHOLDER

    days = {"train_days": TRAIN_DAYS, "eval_days": EVAL_DAYS, "as_of": ""}
    with pytest.raises(ValueError, match=r"schedule_time .*not a date"):
        with_schedule_time(days, PLACEHOLDER)
    # A window the run names wins over the schedule time.
    assert with_schedule_time({**days, "as_of": "2025-03-01"}, "2025-04-01T00:00:00Z") == {
        **days,
        "as_of": "2025-03-01",
    }
    assert with_schedule_time(days, "2025-04-01T00:00:00Z")["as_of"] == "2025-04-01T00:00:00Z"
