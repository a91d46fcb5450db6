"""Drift in the live stream -> retrain -> the new version answers, on real parts.

A real broker, the model server, the scoring consumer with its drift loop, and a retrain that runs
the pipeline's steps (in-process, to keep the test short; `fraud demo` runs them through kfp.local).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
from stream_fixtures import (
    MODEL_NAME,
    make_topics,
    read_topic,
    start_model_server,
    wait_for,
    write_dataset,
)

from core import contract as c
from core.model import model_versions
from core.simulator import SimulationConfig, simulate
from core.windows import history_warmup
from pipelines.runners import run_steps

pytestmark = pytest.mark.slow

DRIFT_DAY = 70
GATE = {"min_auc": 0.0, "min_average_precision": 0.0, "regression_tolerance": 0.9}


def test_drift_triggers_retrain_and_the_new_version_answers(broker, tmp_path):
    from monitoring.drift import DriftConfig, DriftMetrics, RetrainMetrics
    from monitoring.loop import DriftLoop, DriftLoopConfig
    from monitoring.retrain import RetrainConfig, RetrainTrigger
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.metrics import StreamMetrics
    from streaming.replay import Pacing, load_replay_frame, replay_frame
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    df = simulate(
        SimulationConfig(
            n_customers=500,
            n_terminals=1000,
            n_days=90,
            drift_day=DRIFT_DAY,
            drift_kind="spend_shift",
            seed=3,
        )
    )
    data = write_dataset(df, tmp_path / "transactions.parquet")
    start = df[c.TIMESTAMP].min().normalize()
    onset = start + pd.Timedelta(days=DRIFT_DAY)
    base = tmp_path / "models" / "fraud"
    first = run_steps(
        {
            "data_path": str(data),
            "train_start": str(start.date()),
            "train_end": str(onset.date()),
            "model_base_path": str(base),
            "epochs": 6,
            **GATE,
        },
        tmp_path / "first",
    )
    assert first["pushed"] and first["version"] == 1

    server = start_model_server(base, tmp_path / "logs")
    topics = make_topics(broker.bootstrap_servers, partitions=2)
    metrics = StreamMetrics()
    state_dir = tmp_path / "stream"
    trigger = RetrainTrigger(
        RetrainConfig(
            run_dir=tmp_path / "retrain",
            cooldown_s=3600,
            state_dir=state_dir,
            base_data=data,
            train_days=14,
            eval_days=3,
            model_base_path=base,
            pipeline_params={"epochs": 6, **GATE},
        ),
        runner=lambda job: run_steps(job.params, job.run_dir / "steps"),
        metrics=RetrainMetrics(metrics.registry),
    )
    loop = DriftLoop(
        DriftLoopConfig(
            model_base_path=base,
            windows_log=state_dir / "drift_windows.jsonl",
            label_wait_s=8 * c.SECONDS_PER_DAY,
        ),
        DriftConfig(window_size=500, sustained_windows=2, min_samples=500),
        DriftMetrics(metrics.registry),
        trigger,
    )
    consumer = StreamConsumer(
        ConsumerConfig(
            bootstrap_servers=broker.bootstrap_servers,
            group_id="drift-e2e",
            topics=topics,
            state_dir=state_dir,
            exit_when_idle_s=600,
            fsync_snapshots=False,
        ),
        Scorer(build_model_client(server.url, MODEL_NAME), ThresholdStore(base)),
        metrics,
        drift=loop,
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        frame = load_replay_frame(data, c.DEFAULT_LABEL_DELAY_DAYS)
        frame = frame.loc[frame[c.TIMESTAMP] >= onset - history_warmup(7)]
        cut = onset + pd.Timedelta(days=12)
        before, after = frame.loc[frame[c.TIMESTAMP] < cut], frame.loc[frame[c.TIMESTAMP] >= cut]
        replay_frame(
            before, broker.bootstrap_servers, topics=topics, progress=False, trailing_labels=False
        )
        # The drift loop schedules the retrain, the trigger runs it, the server loads v2.
        wait_for(lambda: model_versions(base) == [1, 2], 600, "a pushed version 2")
        wait_for(lambda: _serving(server.url) == "2", 120, "v2 serving")
        replay_frame(
            after, broker.bootstrap_servers, topics=topics, progress=False, pacing=Pacing()
        )
        wait_for(
            lambda: consumer.summary.decided >= len(frame),
            300,
            "every transaction decided",
        )
    finally:
        consumer.stop()
        thread.join(timeout=60)
        server.stop()

    decisions = pd.DataFrame(
        [r["value"] for r in read_topic(broker.bootstrap_servers, topics.decisions)]
    )
    assert set(frame[c.TRANSACTION_ID]) <= set(decisions[c.TRANSACTION_ID])
    versions = decisions.drop_duplicates(c.TRANSACTION_ID).set_index(c.TRANSACTION_ID)
    versions = versions["model_version"].astype(str)
    # Everything replayed after version 2 was serving is decided by it.
    assert set(versions.loc[after[c.TRANSACTION_ID]]) == {"2"}
    assert "1" in set(versions.loc[before[c.TRANSACTION_ID]])
    drift_events = [r["value"] for r in read_topic(broker.bootstrap_servers, topics.drift_events)]
    first_sustained = min(
        pd.Timestamp(e["window_end"]).timestamp() for e in drift_events if e["sustained"]
    )
    # Not before the onset, and by the close of the second drifting window (two windows in a
    # row are required; a window here is about half a simulated day of traffic).
    assert 0 <= first_sustained - onset.timestamp() <= 1.5 * c.SECONDS_PER_DAY
    assert (
        trigger.metrics.registry.get_sample_value("fraud_retrain_runs_total", {"outcome": "pushed"})
        == 1
    )
    assert Path(tmp_path / "retrain" / "history.jsonl").exists()
    # The drifting windows after the trigger do not ask again while the run is going or
    # cooling down (each ask would only be refused and logged).
    assert [r["status"] for r in trigger.history()] == ["started", "pushed"]


def _serving(url: str) -> str | None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/models/{MODEL_NAME}", timeout=5) as resp:
        status = json.loads(resp.read())["model_version_status"]
    available = [s["version"] for s in status if s["state"] == "AVAILABLE"]
    return max(available, key=int) if available else None
