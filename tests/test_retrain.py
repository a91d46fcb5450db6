"""RetrainTrigger: dataset assembly, single flight, cooldown, outcomes, history, schedule.

The runner is ``tiny_pipeline``: a real (small) training pipeline, not a stand-in for one. It
takes the job's pipeline parameters and data file like the KFP pipeline does, runs the real
ingest step (windows + batch features), fits a logistic regression, sets thresholds with the
real evaluator's alert budget, profiles the training data with the real pusher and pushes
atomically. Only the SavedModel is a stub, which nothing here loads. The real kfp.local pipeline
runs in the slow test at the end.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from app import retrain_cli
from core import contract as c
from core.dataio import write_transactions
from core.simulator import SimulationConfig, simulate
from monitoring import retrain as r
from monitoring.drift import DriftConfig, DriftMonitor, RetrainMetrics

MONITORED = [n for n in c.MODEL_INPUTS if n != c.TIMESTAMP]
DAY = pd.Timedelta(days=1)


# --- the tiny pipeline ------------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, rate: float = 0.5):
    """Logistic regression by plain gradient descent on z-scored inputs (numpy only: fast)."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        grad = 1 / (1 + np.exp(-(z @ w + b))) - y
        w -= rate * z.T @ grad / len(y)
        b -= rate * grad.mean()
    return lambda xs: 1 / (1 + np.exp(-(((xs - mu) / sd) @ w + b)))


def tiny_pipeline(
    job: r.RetrainJob, gate: threading.Event | None = None, bless: bool = True
) -> Mapping[str, Any]:
    from components.evaluate.evaluator import GateConfig, thresholds_from_budget
    from components.ingest.ingest import ingest
    from components.push.pusher import push, training_profile
    from core.metadata import ModelMetadata, Thresholds
    from core.windows import resolve_windows

    p = job.params
    window_keys = ("train_start", "train_end", "eval_start", "eval_end", "as_of")
    window_args = {k: p[k] for k in window_keys if p.get(k)}
    windows = resolve_windows(
        label_delay_days=p["label_delay_days"],
        train_days=p.get("train_days", 0),
        eval_days=p.get("eval_days", 0),
        **window_args,
    )
    data = ingest(p["data_path"], windows, p["label_delay_days"])
    if gate is not None and not gate.wait(timeout=60):  # the test holds the run here
        raise TimeoutError("tiny pipeline: the test never released the gate")

    def inputs(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[MONITORED].to_numpy(dtype=float).clip(min=0))

    model = fit_logistic(inputs(data.train), data.train[c.LABEL].to_numpy(dtype=float))
    scores = model(inputs(data.eval))
    if not bless:
        return {"pushed": False, "reasons": ["tiny gate: candidate refused"]}
    thresholds = thresholds_from_budget(scores, GateConfig())
    candidate = job.run_dir / "candidate"
    candidate.mkdir(parents=True)
    (candidate / "saved_model.pb").write_bytes(b"")  # a stub: nothing here loads the model
    metadata = ModelMetadata(
        model_name=p["model_name"],
        thresholds=Thresholds(thresholds[c.REVIEW], thresholds[c.BLOCK]),
        label_delay_days=p["label_delay_days"],
        training_stats=training_profile(data.train, scores, thresholds),
        windows=windows.as_strings(),
    )
    version, path = push(candidate, p["model_base_path"], metadata)
    return {"pushed": True, "version": version, "path": str(path)}


# --- data -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate(SimulationConfig(n_customers=400, n_terminals=800, n_days=70, seed=5))


@pytest.fixture(scope="module")
def base_file(sim: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "transactions.parquet"
    write_transactions(sim, path)
    return path


def config(tmp_path: Path, base_file: Path, **overrides) -> r.RetrainConfig:
    values: dict[str, Any] = {
        "run_dir": tmp_path / "retrain",
        "cooldown_s": 0,
        "base_data": base_file,
        "train_days": 14,
        "eval_days": 7,
        "model_base_path": tmp_path / "models" / "fraud",
    }
    return r.RetrainConfig(**{**values, **overrides})


def trigger(cfg: r.RetrainConfig, runner=tiny_pipeline, **kw) -> r.RetrainTrigger:
    return r.RetrainTrigger(cfg, runner=runner, metrics=RetrainMetrics(CollectorRegistry()), **kw)


def sample(t: r.RetrainTrigger, name: str, **labels: str) -> float | None:
    return t.metrics.registry.get_sample_value(name, labels or None)


# --- the dataset ------------------------------------------------------------------------------------


def _frame(rows: list[tuple[str, str, float | None, str | None]]) -> pd.DataFrame:
    """(id, timestamp, label or None, label_available_at or None) -> raw-schema frame."""
    ts = pd.to_datetime([row[1] for row in rows], utc=True)
    return pd.DataFrame(
        {
            c.TRANSACTION_ID: [row[0] for row in rows],
            c.TIMESTAMP: ts,
            c.CUSTOMER_ID: "cust",
            c.TERMINAL_ID: "term",
            c.AMOUNT: 10.0,
            c.LABEL: [np.nan if row[2] is None else row[2] for row in rows],
            c.LABEL_AVAILABLE_AT: pd.to_datetime([row[3] for row in rows], utc=True),
        }
    )


def test_dataset_merges_deduplicates_and_keeps_only_what_was_known_at_as_of() -> None:
    base = _frame(
        [
            ("b1", "2025-03-01T10:00:00Z", 0, "2025-03-08T10:00:00Z"),
            ("b2", "2025-03-02T10:00:00Z", 1, "2025-03-09T10:00:00Z"),
            # Also consumed; the base copy's label is not known yet at as_of, the consumed one is.
            ("d1", "2025-03-10T10:00:00Z", 1, "2025-03-20T10:00:00Z"),
            # Also consumed without a label: the base copy (labelled) wins.
            ("d2", "2025-03-03T10:00:00Z", 0, "2025-03-10T10:00:00Z"),
        ]
    ).astype({c.LABEL: "int8"})
    consumed = _frame(
        [
            ("d1", "2025-03-10T10:00:00Z", 1, "2025-03-17T10:00:00Z"),
            ("d2", "2025-03-03T10:00:00Z", None, None),
            ("c1", "2025-03-11T10:00:00Z", 0, "2025-03-18T10:00:00Z"),
            ("c2", "2025-03-15T10:00:00Z", 1, "2025-03-22T10:00:00Z"),  # label comes later
            ("c3", "2025-03-16T10:00:00Z", None, None),  # no label yet
            ("c4", "2025-03-19T10:00:00Z", 0, "2025-03-26T10:00:00Z"),  # after as_of
        ]
    )
    frame, info = r.build_training_dataset(consumed, base, as_of="2025-03-18T12:00:00Z")
    assert frame[c.TRANSACTION_ID].tolist() == ["b1", "b2", "d2", "d1", "c1"]  # stream order
    assert frame[c.LABEL].tolist() == [0, 1, 0, 1, 0] and frame[c.LABEL].dtype == "int8"
    assert list(frame.columns) == [*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]
    d1 = frame.loc[frame[c.TRANSACTION_ID] == "d1", c.LABEL_AVAILABLE_AT].iloc[0]
    assert d1 == pd.Timestamp("2025-03-17T10:00:00Z")  # the consumed copy's label
    assert info == {
        "consumed_rows": 6,
        "base_rows": 4,
        "as_of": "2025-03-18T12:00:00+00:00",
        "after_as_of": 1,
        "duplicates": 2,
        "unlabelled_dropped": 2,  # c2, c3
        "rows": 5,
        "frauds": 2,
        "first": "2025-03-01T10:00:00+00:00",
        "last": "2025-03-11T10:00:00+00:00",
    }
    # Without as_of the cut-off is the latest event time: c4 stays out only for its label.
    _, info = r.build_training_dataset(consumed, base)
    assert info["as_of"] == "2025-03-19T10:00:00+00:00" and info["after_as_of"] == 0
    with pytest.raises(ValueError, match="no training data"):
        r.build_training_dataset(consumed.iloc[:0], None)


def write_consumed(state_dir: Path, frame: pd.DataFrame, labelled_by: pd.Timestamp) -> None:
    """What the consumer persists, through its own writer: every transaction of ``frame``, and
    the labels that had arrived by ``labelled_by``."""
    from core.dataio import format_timestamps
    from streaming import messages as m
    from streaming.dataset import ConsumedDataset

    rows = frame.assign(
        **{col: format_timestamps(frame[col]) for col in (c.TIMESTAMP, c.LABEL_AVAILABLE_AT)}
    )
    writer = ConsumedDataset(state_dir, "group")
    writer.append_transactions(rows[list(c.LIVE_FIELDS)].to_dict("records"))
    arrived = rows.loc[frame[c.LABEL_AVAILABLE_AT] <= labelled_by].to_dict("records")
    labels = [m.parse_label(m.label_message(row)) for row in arrived]
    writer.append_labels([(0, i, label) for i, label in enumerate(labels)])
    writer.close()


def test_what_the_consumer_wrote_is_read_back(sim: pd.DataFrame, tmp_path: Path) -> None:
    part = sim.iloc[:3_000]
    as_of = part[c.TIMESTAMP].max()
    write_consumed(tmp_path, part, labelled_by=as_of)
    write_consumed(tmp_path, part.iloc[:10], labelled_by=as_of)  # a crash re-wrote a batch
    consumed = r.load_consumed_dataset(tmp_path)
    known = part[c.LABEL_AVAILABLE_AT] <= as_of
    assert len(consumed) == len(part) and consumed[c.LABEL].notna().sum() == known.sum()
    frame, info = r.build_training_dataset(consumed, None)
    assert info["as_of"] == as_of.isoformat() and info["unlabelled_dropped"] == (~known).sum()
    expected = part.loc[known, [*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


# --- the trigger ------------------------------------------------------------------------------------


def test_a_run_trains_on_the_latest_windows_pushes_and_is_recorded(
    tmp_path: Path, base_file: Path, sim: pd.DataFrame
) -> None:
    t = trigger(config(tmp_path, base_file))
    result = t.trigger("drift: sustained for 3 windows")
    assert result.accepted and result.run_id
    record = t.wait(timeout=60)
    assert record is not None and record.status == r.PUSHED and record.version == 1, record.error
    assert record.run_id == result.run_id

    # Relative windows at the latest event time; the labels in them were known by then.
    as_of = sim[c.TIMESTAMP].max()
    assert record.params["as_of"] == as_of.isoformat()
    assert (record.params["train_days"], record.params["eval_days"]) == (14, 7)
    eval_end = as_of.normalize() - c.DEFAULT_LABEL_DELAY_DAYS * DAY
    assert record.dataset["windows"]["eval_end"] == eval_end.isoformat()
    assert record.dataset["train_frauds"] > 0 and record.dataset["eval_frauds"] > 0
    written = pd.read_parquet(record.params["data_path"])
    assert Path(record.params["data_path"]).parent == t.run_dir / result.run_id
    assert (written[c.LABEL_AVAILABLE_AT] <= as_of).all()

    history = t.history()
    assert [h["status"] for h in history] == [r.STARTED, r.PUSHED]
    assert {h["run_id"] for h in history} == {result.run_id}
    assert history[1]["reason"] == "drift: sustained for 3 windows" and history[1]["version"] == 1
    assert history[1]["duration_s"] >= 0 and "ended_at" in history[1]
    assert t.runs() == history[1:]
    for outcome, expected in ((r.STARTED, 1), (r.PUSHED, 1), (r.FAILED, 0)):
        assert sample(t, "fraud_retrain_runs_total", outcome=outcome) == expected
    assert sample(t, "fraud_retrain_in_progress") == 0
    assert sample(t, "fraud_retrain_last_pushed_version") == 1
    assert sample(t, "fraud_retrain_last_duration_seconds") > 0

    # The loop closes: the new version's metadata is a drift reference.
    monitor = DriftMonitor.from_model_dir(
        t.config.model_base_path, DriftConfig(window_size=100, min_samples=50)
    )
    assert monitor.model_version == 1 and set(monitor.feature_names) == set(MONITORED)


def test_a_local_run_merges_consumed_and_base_data(tmp_path: Path, sim: pd.DataFrame) -> None:
    start = sim[c.TIMESTAMP].min().normalize()
    base = tmp_path / "base.parquet"
    write_transactions(sim[sim[c.TIMESTAMP] < start + 30 * DAY], base)
    recent = sim[sim[c.TIMESTAMP] >= start + 27 * DAY]  # three days seen by both
    as_of = sim[c.TIMESTAMP].max()
    write_consumed(tmp_path / "stream", recent, labelled_by=as_of)
    t = trigger(config(tmp_path, base, state_dir=tmp_path / "stream"))
    t.trigger("drift")
    record = t.wait(timeout=60)
    assert record.status == r.PUSHED, record.error
    info = record.dataset
    overlap = (recent[c.TIMESTAMP] < start + 30 * DAY).sum()
    assert (info["consumed_rows"], info["duplicates"]) == (len(recent), overlap)
    assert info["rows"] == (sim[c.LABEL_AVAILABLE_AT] <= as_of).sum()
    written = pd.read_parquet(record.params["data_path"])
    assert written[c.TRANSACTION_ID].is_unique and len(written) == info["rows"]


def test_single_flight_refuses_a_second_trigger_with_the_reason(
    tmp_path: Path, base_file: Path
) -> None:
    gate = threading.Event()
    t = trigger(config(tmp_path, base_file), runner=lambda job: tiny_pipeline(job, gate))
    other = trigger(config(tmp_path, base_file))
    try:
        first = t.trigger("drift")
        second = t.trigger("drift again")
        assert first.accepted and t.in_progress
        assert not second.accepted and second.refused == r.IN_PROGRESS
        assert first.run_id in second.message
        # Another process sharing the run directory is refused too (the file lock).
        third = other.trigger("other process")
        assert not third.accepted and third.refused == r.IN_PROGRESS
        assert "another process" in third.message
    finally:
        gate.set()
    record = t.wait(timeout=60)
    assert record.status == r.PUSHED and not t.in_progress
    statuses = [(h["status"], h.get("cause")) for h in t.history()]
    assert statuses == [
        (r.STARTED, None),
        (r.REFUSED, r.IN_PROGRESS),
        (r.REFUSED, r.IN_PROGRESS),
        (r.PUSHED, None),
    ]
    assert sample(t, "fraud_retrain_refused_total", cause=r.IN_PROGRESS) == 1
    # Once it is over, the lock is free again.
    assert other.trigger("after").accepted
    other.wait(timeout=60)


def test_cooldown_counts_from_the_last_start_across_instances(
    tmp_path: Path, base_file: Path
) -> None:
    now = [1_000_000.0]
    cfg = config(tmp_path, base_file, cooldown_s=3_600)
    t = trigger(cfg, clock=lambda: now[0])
    assert t.trigger("first").accepted
    t.wait(timeout=60)
    now[0] += 3_599
    refused = t.trigger("too soon")
    assert not refused.accepted and refused.refused == r.COOLDOWN
    # 1,000,000 s after the epoch, and an hour later.
    assert "started at 1970-01-12T13:46:40" in refused.message
    assert "until 1970-01-12T14:46:40" in refused.message
    # A restarted process reads the last start from the history file.
    restarted = trigger(cfg, clock=lambda: now[0])
    assert restarted.trigger("after restart").refused == r.COOLDOWN
    assert restarted.status()["cooling_down"]
    now[0] += 1
    assert restarted.trigger("cooled down").accepted
    restarted.wait(timeout=60)
    assert [h["status"] for h in restarted.history()] == [
        r.STARTED,
        r.PUSHED,
        r.REFUSED,
        r.REFUSED,
        r.STARTED,
        r.PUSHED,
    ]
    assert sample(t, "fraud_retrain_refused_total", cause=r.COOLDOWN) == 1


def test_failures_and_refusals_by_the_gate_are_outcomes(tmp_path: Path, base_file: Path) -> None:
    def broken(job: r.RetrainJob) -> Mapping[str, Any]:
        raise RuntimeError("trainer ran out of memory")

    t = trigger(config(tmp_path / "a", base_file), runner=broken)
    assert t.trigger("drift").accepted
    record = t.wait(timeout=60)
    assert record.status == r.FAILED and record.error == "RuntimeError: trainer ran out of memory"
    assert sample(t, "fraud_retrain_runs_total", outcome=r.FAILED) == 1
    assert sample(t, "fraud_retrain_in_progress") == 0

    t = trigger(
        config(tmp_path / "b", base_file), runner=lambda job: tiny_pipeline(job, bless=False)
    )
    t.trigger("drift")
    record = t.wait(timeout=60)
    assert record.status == r.NOT_BLESSED and record.gate_reasons == [
        "tiny gate: candidate refused"
    ]
    assert sample(t, "fraud_retrain_last_pushed_version") == 0

    # Windows without data fail before the runner is called, saying which window and why.
    called = []
    cfg = config(tmp_path / "c", base_file, train_start="2024-01-01", train_end="2024-02-01")
    t = trigger(cfg, runner=called.append)
    t.trigger("drift")
    record = t.wait(timeout=60)
    assert record.status == r.FAILED and not called
    assert "train window" in record.error and "0 labelled transactions" in record.error


def test_missing_consumed_data_is_a_clear_failure(tmp_path: Path) -> None:
    cfg = r.RetrainConfig(run_dir=tmp_path / "retrain", state_dir=tmp_path / "nowhere")
    t = trigger(cfg)
    t.trigger("drift")
    record = t.wait(timeout=60)
    assert record.status == r.FAILED and "nowhere/dataset does not exist" in record.error


def test_schedule_runs_every_period(tmp_path: Path, base_file: Path) -> None:
    t = trigger(config(tmp_path, base_file))
    results = r.run_schedule(t, every_s=0.01, max_runs=2)
    assert [rec.status for _, rec in results] == [r.PUSHED, r.PUSHED]
    assert [rec.version for _, rec in results] == [1, 2]
    assert {rec.reason for _, rec in results} == {"scheduled every 0.01s"}
    (once,) = r.run_schedule(t, every_s=0, once=True, reason="manual")
    assert once[1].version == 3 and once[1].reason == "manual"


def test_explicit_windows_and_extra_parameters_reach_the_pipeline(
    tmp_path: Path, base_file: Path
) -> None:
    cfg = config(
        tmp_path,
        base_file,
        train_start="2025-01-05",
        train_end="2025-02-01",
        pipeline_params={"epochs": 3},
    )
    job = trigger(cfg).prepare_job("run-1", "manual")
    assert job.params["train_start"] == "2025-01-05" and job.params["train_end"] == "2025-02-01"
    assert job.params["eval_days"] == 7 and job.params["epochs"] == 3 and "as_of" not in job.params
    assert job.dataset["windows"]["eval_start"] == "2025-01-25T00:00:00+00:00"


def test_cluster_mode_submits_through_kfp(tmp_path: Path) -> None:
    submitted: list[dict] = []

    class Client:  # what kfp.Client would be given; no cluster is reachable here
        def create_run_from_pipeline_package(self, package, arguments, experiment_name, run_name):
            submitted.append({"package": package, "arguments": arguments, "exp": experiment_name})
            return type("Run", (), {"run_id": "kfp-run-7"})()

    cfg = r.RetrainConfig(
        run_dir=tmp_path,
        mode=r.CLUSTER,
        host="http://kfp.example:8888",
        cluster_data_path="/data/validated/transactions.parquet",
        as_of="2025-04-01",
    )
    runner = retrain_cli.runner_for(cfg)
    assert isinstance(runner, retrain_cli.ClusterRunner) and runner.host == cfg.host
    runner.client = Client()
    t = trigger(cfg, runner=runner)
    t.trigger("drift")
    record = t.wait(timeout=30)
    assert record.status == r.SUBMITTED and record.kfp_run_id == "kfp-run-7"
    (call,) = submitted
    assert call["arguments"]["data_path"] == "/data/validated/transactions.parquet"
    assert call["arguments"]["as_of"] == "2025-04-01" and call["exp"] == "fraud"
    assert sample(t, "fraud_retrain_runs_total", outcome=r.SUBMITTED) == 1


# --- CLI and small helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6h", 21_600), ("30m", 1_800), ("1h30m", 5_400), ("2d", 172_800), ("45s", 45), ("90", 90)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert r.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6x", "h6", "-5", "1h 30"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        r.parse_duration(text)


def test_cli_registers_retrain(tmp_path: Path) -> None:
    import argparse

    from core.settings import Settings

    parser = argparse.ArgumentParser()
    retrain_cli.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["retrain", "--every", "6h", "--state-dir", str(tmp_path), "--base-data", "b.parquet"]
        + ["--train-days", "21", "--set", "epochs=4", "--cooldown", "30m"]
    )
    assert args.func is retrain_cli.retrain_command
    cfg = retrain_cli.config_from_args(args, Settings(run_dir=tmp_path / "runs"))
    assert cfg.run_dir == tmp_path / "runs" / "retrain" and cfg.state_dir == tmp_path
    assert (cfg.train_days, cfg.eval_days, cfg.cooldown_s) == (21, 7, 1_800)
    assert cfg.pipeline_params == {"epochs": 4} and cfg.base_data == Path("b.parquet")
    bad = parser.parse_args(["retrain"])
    with pytest.raises(ValueError, match="--every"):
        retrain_cli.retrain_command(bad, Settings(run_dir=tmp_path))


def test_consumer_cli_configures_drift_triggered_cluster_runs(tmp_path: Path) -> None:
    from app import stream_cli as cli
    from core.settings import Settings
    from streaming.consumer import ConsumerConfig
    from streaming.metrics import StreamMetrics

    args = cli.build_parser().parse_args(
        ["stream", "consume", "--bootstrap-servers", "kafka:9092", "--drift-window-time", "24h"]
        + ["--retrain", "cluster", "--retrain-host", "http://kfp.example:8888"]
        + ["--retrain-export-path", str(tmp_path / "export" / "retrain.parquet")]
        + ["--retrain-cluster-data-path", "/mnt/fraud/retrain.parquet"]
        + ["--retrain-run-dir", str(tmp_path / "retrain"), "--drift-night-z", "0"]
    )
    config = ConsumerConfig(bootstrap_servers="kafka:9092", state_dir=tmp_path / "stream")
    loop = cli._drift_loop(args, Settings(run_dir=tmp_path), config, StreamMetrics())
    cfg = loop.trigger.config
    assert (cfg.mode, cfg.host) == (r.CLUSTER, "http://kfp.example:8888")
    assert cfg.cluster_data_path == "/mnt/fraud/retrain.parquet"
    assert cfg.export_path == tmp_path / "export" / "retrain.parquet"
    assert loop.drift_config.night_z_threshold is None
    assert loop.drift_config.window_seconds == 86_400


def test_local_drift_retrains_deploy_to_the_consumers_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local pipeline's push step (a child process) reads its settings from the
    environment: the consumer hands it its own server and model config file."""
    from app import stream_cli as cli
    from core.settings import Settings
    from streaming.consumer import ConsumerConfig
    from streaming.metrics import StreamMetrics

    # Set here so that the environment is restored after the test.
    monkeypatch.setenv("FRAUD_SERVING_URL", "http://elsewhere:8501")
    monkeypatch.setenv("FRAUD_MODEL_CONFIG_FILE", "elsewhere.config")
    args = cli.build_parser().parse_args(
        ["stream", "consume", "--bootstrap-servers", "kafka:9092", "--drift-window-time", "24h"]
        + ["--retrain", "local", "--retrain-run-dir", str(tmp_path / "retrain")]
        + ["--serving-url", "http://serving.example:8501"]
        + ["--model-config-file", str(tmp_path / "models.config")]
    )
    config = ConsumerConfig(bootstrap_servers="kafka:9092", state_dir=tmp_path / "stream")
    cli._drift_loop(args, Settings(run_dir=tmp_path), config, StreamMetrics())
    pushed_with = Settings.from_env()
    assert pushed_with.serving_url == "http://serving.example:8501"
    assert pushed_with.model_config_file == str(tmp_path / "models.config")


def test_push_outcome_is_recorded(tmp_path: Path, base_file: Path) -> None:
    runner = lambda job: {"pushed": True, "version": 3, "serving": "canary"}  # noqa: E731
    t = trigger(config(tmp_path, base_file), runner=runner)
    t.trigger("drift")
    record = t.wait(timeout=60)
    assert record is not None and (record.version, record.serving) == (3, "canary")
    assert t.history()[-1]["serving"] == "canary"


def test_history_is_json_lines(tmp_path: Path, base_file: Path) -> None:
    t = trigger(config(tmp_path, base_file), runner=lambda job: {"pushed": False})
    t.trigger("drift")
    t.wait(timeout=60)
    lines = (t.run_dir / r.HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == [r.STARTED, r.NOT_BLESSED]


# --- the real pipeline --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_pipeline_runs_through_the_trigger(tmp_path: Path) -> None:
    """kfp.local end to end through the trigger, on consumed + base data (~3.5 min on 2 busy
    cores)."""
    data = simulate(SimulationConfig(n_customers=500, n_terminals=1000, n_days=75, seed=8))
    # The base file ends on day 38; the consumer saw days 35-50 (overlapping the base by three
    # days) and the labels that had arrived by the end.
    start = data[c.TIMESTAMP].min().normalize()
    base = tmp_path / "base.parquet"
    write_transactions(data[data[c.TIMESTAMP] < start + 38 * DAY], base)
    recent = data[data[c.TIMESTAMP] >= start + 35 * DAY]
    write_consumed(tmp_path / "stream", recent, labelled_by=data[c.TIMESTAMP].max())
    cfg = r.RetrainConfig(
        run_dir=tmp_path / "retrain",
        cooldown_s=0,
        state_dir=tmp_path / "stream",
        base_data=base,
        train_days=28,
        eval_days=7,
        model_base_path=tmp_path / "models" / "fraud",
        pipeline_params={"epochs": 3, "min_auc": 0.6, "min_average_precision": 0.05},
    )
    t = trigger(cfg, runner=retrain_cli.runner_for(cfg))
    assert t.runner is retrain_cli.local_runner
    t.trigger("slow test")
    record = t.wait(timeout=900)
    assert record.status == r.PUSHED and record.version == 1, record.error or record.gate_reasons
    assert record.dataset["consumed_rows"] == len(recent) and record.dataset["duplicates"] > 0
    assert record.dataset["as_of"] == data[c.TIMESTAMP].max().isoformat()
    monitor = DriftMonitor.from_model_dir(cfg.model_base_path)
    assert monitor.model_version == 1 and 0 < monitor.expected_alert_rate < 0.05
