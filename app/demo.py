"""The main job (`make run` = `fraud demo`): the whole platform, end to end, on embedded defaults.

simulate (with a drift scenario) -> `dvc repro` -> first model through the KFP pipeline -> broker
+ model server -> replay the stream while the consumer scores it -> the new fraud pattern appears
-> drift detected -> retraining -> the new version is shadow-scored as canary -> the consumer
promotes it -> summary table + HTML report, with the Grafana dashboards rendered from a real
Prometheus that scraped the run (app/demo_dashboards.py; skipped, saying why, without one).

Every process this starts is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from core.settings import Topics

log = logging.getLogger("fraud.demo")
REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "summary.json"  # in the run directory


@dataclass
class DemoConfig:
    run_dir: Path
    params: Path = REPO_ROOT / "params.yaml"
    data: Path = REPO_ROOT / "data" / "validated" / "transactions.parquet"
    # The first model learns from [start, start + first_train_days) (training itself starts
    # after the features' history warm-up); the replay starts a warm-up before its end, so the
    # consumer's feature state is complete when the first model's unseen traffic begins.
    first_train_days: int = 75
    rate: float = 1500.0  # transactions/s offered while no retrain runs
    hold_rate: float = 100.0  # ... and while one runs: the stream keeps flowing, slower
    # Retrain once this many days of labelled post-drift data exist beyond the evaluation window.
    label_wait_days: float = 17
    partitions: int = 2
    # Event-time windows of whole days (traffic's daily rhythm cancels out), evaluated hourly:
    # Onset to detection: 58 simulated hours with count windows of about a day, 38-41 with these.
    drift_window_time: str = "24h"
    drift_hop: str = "1h"
    retrain_train_days: int = 42
    retrain_eval_days: int = 7
    epochs: int = 12
    # Gradient-boosted trees: on this data their scores keep the evaluation window's distribution
    # from day to day, where the network's move with the calendar up to the score check's
    # threshold, so the check stays quiet until the traffic really changes (docs/drift.md).
    model: str = "gbt"
    topics: Topics = field(default_factory=Topics)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _retrain_state(run_dir: Path) -> str:
    """'idle', 'running' or 'done', from the retrain history the consumer's trigger writes."""
    from app.demo_report import load_jsonl

    records = load_jsonl(run_dir / "retrain" / "history.jsonl")
    started = {r["run_id"] for r in records if r.get("status") == "started" and r.get("run_id")}
    ended = {
        r["run_id"]
        for r in records
        if r.get("status") not in ("started", "refused") and r.get("run_id")
    }
    if started - ended:
        return "running"
    return "done" if ended else "idle"


def read_topic(bootstrap: str, topic: str) -> list[dict]:
    """Every message of a topic at rest, decoded (``streaming.broker.read_at_rest``)."""
    from kafka import KafkaConsumer

    from streaming.broker import read_at_rest

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        records, _ = read_at_rest(consumer, topic)
        return [json.loads(r.value) for r in records]
    finally:
        consumer.close()


def run_demo(cfg: DemoConfig) -> dict:
    from app.demo_dashboards import MONITORING_CONFIG, start_monitoring
    from core.dataio import read_transactions
    from core.datajobs import load_params
    from core.windows import history_warmup
    from pipelines.runners import run_local
    from serving._launch import ServerProcess
    from serving.rollout import default_config_path, stable_config, write_atomically
    from streaming.broker import EmbeddedBroker, create_topics
    from streaming.replay import Pacing, load_replay_frame, replay_frame

    t_begin = time.time()
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    models = run_dir / "models" / "fraud"
    sim = load_params(cfg.params)["simulate"]
    delay = int(sim.get("label_delay_days", c.DEFAULT_LABEL_DELAY_DAYS))
    timings: dict[str, float] = {}

    print("== 1/5 data: dvc repro (simulate -> validate -> features)", flush=True)
    t = time.time()
    subprocess.run([_bin("dvc"), "repro"], cwd=REPO_ROOT, check=True)
    timings["dvc_repro_s"] = time.time() - t
    df = read_transactions(cfg.data)
    start = df[c.TIMESTAMP].min().normalize()
    first_end = start + pd.Timedelta(days=cfg.first_train_days)
    onset = start + pd.Timedelta(days=int(sim["drift_day"]))

    print(f"== 2/5 first model: KFP pipeline on [{start.date()}, {first_end.date()})", flush=True)
    t = time.time()
    first = run_local(
        {
            "data_path": str(cfg.data),
            "train_start": str(start.date()),
            "train_end": str(first_end.date()),
            "model_base_path": str(models),
            "epochs": cfg.epochs,
            "model": cfg.model,
            "label_delay_days": delay,
        },
        run_dir / "kfp-first",
    )
    timings["first_pipeline_s"] = time.time() - t
    if not first.get("pushed"):
        raise RuntimeError(f"the first model was not pushed: {first}")
    first_version = str(first["version"])
    # The server reads a model config file from the start, so that the retrained version is
    # loaded beside the first one as canary and promoted only by the consumer's rule.
    model_config = default_config_path(models)
    write_atomically(model_config, stable_config("fraud", models, int(first_version), model_config))

    print("== 3/5 services: Prometheus, Kafka-protocol broker, model server, consumer", flush=True)
    procs: list = []
    consumer_proc = None
    try:
        monitoring = start_monitoring(run_dir / "prometheus")
        procs.append(monitoring)
        if monitoring.reason:
            print(f"   {monitoring.reason}", flush=True)
        broker = EmbeddedBroker(log_path=run_dir / "logs" / "broker.log").start()
        procs.append(broker)
        create_topics(broker.bootstrap_servers, cfg.topics, partitions=cfg.partitions)
        server = ServerProcess(
            [
                f"--model_config_file={model_config}",
                "--model_config_file_poll_wait_seconds=1",
                "--file_system_poll_wait_seconds=1",
                f"--monitoring_config_file={MONITORING_CONFIG}",
            ],
            log_path=run_dir / "logs" / "model_server.log",
        ).start()
        procs.append(server)
        metrics_port = _free_port()
        monitoring.watch(f"127.0.0.1:{metrics_port}", f"{server.host}:{server.port}")
        consumer_cmd = [
            _bin("fraud"),
            "stream",
            "consume",
            f"--bootstrap-servers={broker.bootstrap_servers}",
            f"--serving-url={server.url}",
            f"--model-base-path={models}",
            f"--state-dir={run_dir / 'stream'}",
            f"--metrics-port={metrics_port}",
            f"--drift-window-time={cfg.drift_window_time}",
            f"--drift-hop={cfg.drift_hop}",
            "--retrain=local",
            f"--retrain-run-dir={run_dir / 'retrain'}",
            f"--retrain-base-data={cfg.data}",
            f"--retrain-train-days={cfg.retrain_train_days}",
            f"--retrain-eval-days={cfg.retrain_eval_days}",
            f"--retrain-set=epochs={cfg.epochs}",
            f"--retrain-set=model={cfg.model}",
            f"--retrain-label-wait-days={cfg.label_wait_days}",
            "--drift-sustained=1",
            "--drift-alert-bounds=0.4,2.0",
        ]
        consumer_log = open(run_dir / "logs" / "consumer.log", "ab")  # noqa: SIM115
        consumer_proc = subprocess.Popen(
            consumer_cmd, cwd=REPO_ROOT, stdout=consumer_log, stderr=subprocess.STDOUT
        )

        print(
            f"== 4/5 stream: replay while the consumer scores (drift on {onset.date()})", flush=True
        )
        _wait_assigned(metrics_port, consumer_proc, run_dir)
        frame = load_replay_frame(cfg.data, delay)
        frame = frame.loc[frame[c.TIMESTAMP] >= first_end - history_warmup(delay)]
        frame = frame[[*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]]
        t = time.time()

        def current_rate() -> float:
            return cfg.hold_rate if _retrain_state(run_dir) == "running" else cfg.rate

        replayed = replay_frame(
            frame,
            broker.bootstrap_servers,
            topics=cfg.topics,
            pacing=Pacing(rate=cfg.rate, rate_source=current_rate),
        )
        timings["replay_s"] = time.time() - t
        # A retrain still running when the stream ends finishes before the report; then the
        # consumer drains (every replayed transaction decided) and is asked to stop.
        while _retrain_state(run_dir) == "running":
            time.sleep(2)
        deadline = time.time() + 1200
        while _decided(metrics_port) < replayed.transactions:
            if consumer_proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the consumer stopped early; see {run_dir / 'logs'}")
            time.sleep(1)
        monitoring.settle()
        stream_end = time.time()
        consumer_proc.terminate()
        consumer_proc.wait(timeout=120)
        consumer_log.close()
        t = time.time()
        dashboards = monitoring.render(run_dir / "dashboards", end=stream_end)
        timings["dashboards_s"] = time.time() - t
        decisions = pd.DataFrame(read_topic(broker.bootstrap_servers, cfg.topics.decisions))
        drift_events = read_topic(broker.bootstrap_servers, cfg.topics.drift_events)
        shadow = read_topic(broker.bootstrap_servers, cfg.topics.shadow_scores)
    finally:
        if consumer_proc is not None and consumer_proc.poll() is None:
            consumer_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                consumer_proc.wait(timeout=30)
            if consumer_proc.poll() is None:
                consumer_proc.kill()
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()

    print("== 5/5 summary and report", flush=True)
    summary = summarize(
        cfg,
        run_dir,
        df,
        decisions,
        drift_events,
        onset,
        first_version,
        models,
        replayed,
        shadow,
        dashboards,
    )
    summary["timings"] = {**timings, "total_s": time.time() - t_begin}
    summary["finished_at"] = pd.Timestamp.now(tz="UTC").strftime(c.TIMESTAMP_FORMAT)
    # Written last, so it holds the timings: bench.demo_figures records README figures from it.
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _metric(metrics_port: int, name: str) -> float:
    """One unlabelled value from the consumer's own Prometheus endpoint (0 until it answers)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_total ") or line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


def _decided(metrics_port: int) -> float:
    from streaming.metrics import DECIDED

    return _metric(metrics_port, DECIDED)


def _wait_assigned(metrics_port: int, consumer_proc, run_dir: Path, timeout_s: float = 180) -> None:
    """Traffic starts once the consumer owns its partitions, as in production: otherwise its
    start-up and group join (10-20 s on the embedded broker) count as the first transactions'
    latency (one run's p99 was 16 s for that alone)."""
    from streaming.metrics import ASSIGNED_PARTITIONS

    deadline = time.time() + timeout_s
    while _metric(metrics_port, ASSIGNED_PARTITIONS) < 1:
        if consumer_proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(
                f"the consumer did not join its group within {timeout_s:.0f} s; see "
                f"{run_dir / 'logs'}"
            )
        time.sleep(0.5)


def _free_port() -> int:
    from serving._launch import free_port

    return free_port()


def summarize(
    cfg,
    run_dir,
    truth,
    decisions,
    drift_events,
    onset,
    first_version,
    models,
    replayed,
    shadow,
    dashboards,
):
    from app import demo_report as r

    decisions["model_version"] = decisions["model_version"].astype(str)
    decisions[c.TIMESTAMP] = pd.to_datetime(decisions[c.TIMESTAMP], utc=True)
    joined = r.join_truth(decisions, truth)
    first_end = truth[c.TIMESTAMP].min().normalize() + pd.Timedelta(days=cfg.first_train_days)
    scored_live = joined.loc[joined[c.TIMESTAMP] >= first_end]  # warm-up rows are in-sample
    phase_list = r.phases(scored_live, onset, first_version)
    decided_at = pd.to_datetime(decisions["decided_at"], utc=True)
    history = r.load_jsonl(run_dir / "retrain" / "history.jsonl")
    windows = r.load_jsonl(run_dir / "stream" / "drift_windows.jsonl")
    # Drift-event messages carry ISO times: compare as epoch seconds.
    sustained = [
        pd.Timestamp(e["window_end"]).timestamp()
        for e in drift_events
        if e.get("sustained") and e.get("window_end")
    ]
    detected = min((t for t in sustained if t >= onset.timestamp()), default=None)
    detected_ts = pd.Timestamp(detected, unit="s", tz="UTC") if detected is not None else None
    new_versions = sorted({v for v in decisions["model_version"] if v != first_version}, key=int)
    trigger_to_serving = None
    retrain_window = None
    started = [h for h in history if h.get("status") == "started"]
    if started and new_versions:
        t0 = r.utc(started[0]["started_at"])
        first_new = decided_at[decisions["model_version"] == new_versions[0]].min()
        trigger_to_serving = (first_new - t0).total_seconds()
        retrain_window = (t0, first_new)
    before = next((p for p in phase_list if p.name.startswith("before")), None)
    after = [p for p in phase_list if p.name.startswith("after retrain")]
    recovery = (
        after[-1].average_precision / before.average_precision
        if after and before and after[-1].average_precision and before.average_precision
        else None
    )
    e2e = decisions.get("end_to_end_ms")
    # Training shares the 2 cores with the stream while it runs: the latency outside that
    # window is the scoring path's own.
    steady = e2e
    if e2e is not None and retrain_window is not None:
        steady = e2e[~decided_at.between(*retrain_window).to_numpy()]
    span = (decided_at.max() - decided_at.min()).total_seconds()
    summary = {
        "scored": int(decisions[c.TRANSACTION_ID].nunique()),
        "duplicates": int(len(decisions) - decisions[c.TRANSACTION_ID].nunique()),
        "replayed": replayed.transactions,
        "throughput": len(decisions) / span if span > 0 else None,
        "p50_ms": float(np.percentile(e2e, 50)) if e2e is not None else None,
        "p99_ms": float(np.percentile(e2e, 99)) if e2e is not None else None,
        "p50_ms_outside_retrain": (
            float(np.percentile(steady, 50)) if steady is not None and len(steady) else None
        ),
        "p99_ms_outside_retrain": (
            float(np.percentile(steady, 99)) if steady is not None and len(steady) else None
        ),
        "alerts": int(decisions["decision"].isin([c.REVIEW, c.BLOCK]).sum()),
        "phases": [p.__dict__ for p in phase_list],
        "onset": onset.strftime(c.TIMESTAMP_FORMAT),
        "false_alarms_before_onset": sum(t < onset.timestamp() for t in sustained),
        "detected_at": detected_ts.strftime(c.TIMESTAMP_FORMAT)
        if detected_ts is not None
        else None,
        "detection_delay_h": (detected_ts - onset).total_seconds() / 3600 if detected_ts else None,
        "trigger_to_serving_s": trigger_to_serving,
        **r.rollout_figures(history, shadow, drift_events),
        "shadow": r.shadow_comparison(shadow, truth),
        "recovery_ratio": recovery,
        "versions": [first_version, *new_versions],
        "retrains": history,
        "dashboards": dashboards,
    }
    pr = {}
    if new_versions:
        post = joined.loc[joined["model_version"] == new_versions[-1]]
        pr = offline_scores(
            truth, post[c.TRANSACTION_ID], models, [first_version, new_versions[-1]]
        )
    rows = r.summary_rows(summary)
    figs = r.plots(scored_live, onset, first_version, windows, pr)
    figs["analyst"] = r.analyst_plot(r.analyst_figures(scored_live, alert_budgets(models)))
    notes = [
        f"run directory: {run_dir}",
        "AP phases use live decisions joined with the simulator's labels; PR curves score the "
        "post-retrain traffic offline with both versions.",
        "Shadow rows: stable's live decisions vs the canary's shadow decisions on the same "
        "transactions, judged on the simulator's labels; canary serving = its first shadow "
        "record, promoted = the consumer's 'promoted' rollout event (drift-events topic).",
    ]
    if dashboards["rendered"]:
        notes.append(
            "Dashboards: k8s/grafana's, each panel's PromQL asked of the Prometheus that scraped "
            "this run (consumer and model server), drawn by monitoring/dashboard_render.py."
        )
    report = r.write_html(
        run_dir / "report.html", rows, figs, notes, [Path(p) for p in dashboards["rendered"]]
    )
    summary["table"] = r.format_table(rows)
    summary["report"] = str(report)
    return summary


def alert_budgets(models: Path) -> dict[str, float]:
    """Each pushed version's expected alert rate (its evaluation window's): the alert budget."""
    from core.metadata import ModelMetadata

    budgets = {}
    for version_dir in sorted(p for p in models.iterdir() if p.name.isdigit()):
        stats = ModelMetadata.read(version_dir).training_stats
        budgets[version_dir.name] = float(stats.get("expected_alert_rate", float("nan")))
    return budgets


def offline_scores(truth, tx_ids, models: Path, versions: list[str]) -> dict:
    """Both versions on the same transactions (batch features over the full history)."""
    from core.features.batch import build_feature_table
    from core.metadata import ModelMetadata
    from core.model import SavedModelScorer

    meta = ModelMetadata.read(models / versions[-1])
    table = build_feature_table(truth, meta.label_delay_days)
    table = table.loc[table[c.TRANSACTION_ID].isin(set(tx_ids))]
    y = table[c.LABEL].to_numpy()
    return {f"version {v}": (y, SavedModelScorer(models / v).score(table)) for v in versions}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fraud demo", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    run_dir = args.run_dir or REPO_ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    summary = run_demo(DemoConfig(run_dir=run_dir))
    print()
    print(summary["table"])
    print(f"\ntotal {summary['timings']['total_s']:.0f} s; report: {summary['report']}")
    return 0
