"""The options of ``fraud stream consume``: scoring, bounds, state, and drift monitoring with
retraining. Their defaults are the config classes' own (``ConsumerConfig``, ``DriftConfig``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core import contract as c
from monitoring.drift import DriftConfig
from streaming.consumer import ConsumerConfig
from streaming.kafka_config import add_kafka_arguments
from streaming.scoring import PROTOCOLS


def _deadline(text: str) -> float | None:
    """Seconds, or 'off' for no decision deadline."""
    if text.strip().lower() == "off":
        return None
    try:
        seconds = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected seconds or 'off', got {text!r}") from err
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a deadline must be > 0 s, got {text!r}")
    return seconds


def add_consume_arguments(con: argparse.ArgumentParser) -> None:
    """Every option of the consume command, on its parser."""
    con.add_argument(
        "--serving-protocol",
        choices=PROTOCOLS,
        default="rest",
        help="how to call the model server: TF Serving's REST or gRPC API",
    )
    con.add_argument(
        "--serving-url",
        help="model server address: the REST base URL (default: serving_url), or with "
        "--serving-protocol grpc its gRPC host:port (default: serving_grpc_target)",
    )
    con.add_argument("--model-name", help="served model name (default: model_name)")
    con.add_argument("--model-base-path", help="models volume, read for each version's thresholds")
    con.add_argument("--group-id", default="fraud-scoring", help="consumer group")
    con.add_argument("--state-dir", help="snapshots and consumed data (default: <run_dir>/stream)")
    con.add_argument("--max-messages", type=int, help="exit after this many transactions")
    con.add_argument(
        "--exit-when-idle-seconds", type=float, help="exit after this long without transactions"
    )
    con.add_argument(
        "--batch-size",
        "--max-poll-records",
        dest="batch_size",
        type=int,
        default=1000,
        help="transactions per poll batch (one :predict call each)",
    )
    con.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=ConsumerConfig.fetch_max_wait_ms,
        help="longest the broker may hold a transactions fetch (latency on Tansu, which holds "
        "a fetch that finds nothing this long and answers it empty; Apache Kafka answers as "
        "soon as data is there)",
    )
    con.add_argument(
        "--labels-fetch-max-wait-ms",
        type=int,
        default=ConsumerConfig.labels_fetch_max_wait_ms,
        help="longest the broker may hold a labels fetch (the labels barrier waits for it when "
        "labels arrive; latency on Tansu as for --fetch-max-wait-ms)",
    )
    con.add_argument(
        "--slow-batch-ms",
        type=float,
        default=ConsumerConfig.slow_batch_s * 1000,
        help="log the time of each stage of a poll plus batch that takes this long",
    )
    con.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    con.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics and health server binds (default loopback; 0.0.0.0 to let "
        "Prometheus and the kubelet reach it from outside the pod)",
    )
    con.add_argument(
        "--review-ledger",
        type=Path,
        help="take analysts' review outcomes on POST /labels of the metrics port and publish "
        "them to the labels topic once per transaction, recorded in this JSON-lines ledger "
        "(replicas may share it on one volume: each publish holds its file lock)",
    )
    con.add_argument(
        "--snapshot-interval-seconds",
        type=float,
        default=2.0,
        help="seconds between feature-state snapshots (0: after every commit)",
    )
    con.add_argument(
        "--lag-bound-seconds",
        type=float,
        default=60.0,
        help="how long a batch may wait for the model server before it is an incident",
    )
    con.add_argument(
        "--decision-deadline-seconds",
        type=_deadline,
        default=ConsumerConfig.decision_deadline_s,
        help="how long a transaction may wait for the model server before it gets the "
        "fallback decision (re-scored, and corrected, once the server answers); 'off' holds "
        "without a deadline (default %(default)s)",
    )
    con.add_argument(
        "--fallback-decision",
        choices=c.DECISIONS,
        default=ConsumerConfig.fallback_decision,
        help="the decision of a transaction whose deadline passed (default %(default)s)",
    )
    con.add_argument(
        "--max-fallback-backlog",
        type=int,
        default=ConsumerConfig.max_fallback_backlog,
        help="fallback-decided transactions kept for their re-score; beyond it the consumer "
        "holds new batches instead (default %(default)s)",
    )
    con.add_argument(
        "--max-pending-labels",
        type=int,
        default=ConsumerConfig.max_pending_labels,
        help="labels a partition holds until they become available; more are refused and "
        "counted (default %(default)s)",
    )
    con.add_argument(
        "--recent-ids",
        type=int,
        default=ConsumerConfig.recent_ids,
        help="transaction ids a partition remembers: an identical re-send is skipped, one "
        "with other content dead-lettered (default %(default)s)",
    )
    con.add_argument("--serving-timeout-seconds", type=float, default=10.0)
    con.add_argument(
        "--serving-label",
        default="stable",
        help="decide with the version the server labels so ('none': always the highest "
        "AVAILABLE version); while the server knows no such label (no model config file, or "
        "the seed config) the highest AVAILABLE version decides (default %(default)s)",
    )
    con.add_argument(
        "--session-timeout-ms",
        type=int,
        default=10_000,
        help="group session timeout: how long a crashed member blocks its partitions",
    )
    con.add_argument("--label-delay-days", type=int, help="must match the model's training")
    con.add_argument(
        "--max-event-time-skew",
        type=float,
        default=ConsumerConfig.max_event_time_skew_s,
        metavar="SECONDS",
        help="dead-letter a transaction that moves its partition's event time further ahead "
        "than this plus the time the log clock (Kafka timestamps) moved since the newest "
        "accepted one (default: 86400, one day; raise it to replay sparse data fast)",
    )
    con.add_argument(
        "--max-message-bytes",
        type=int,
        default=ConsumerConfig.max_message_bytes,
        help="dead-letter larger transactions messages (key plus value) without decoding them",
    )
    con.add_argument(
        "--dead-letter-max-payload-bytes",
        type=int,
        default=ConsumerConfig.dead_letter_max_payload_bytes,
        help="bytes of the original key and of the value kept in a dead letter (their full "
        "size and sha256 are always recorded)",
    )
    con.add_argument(
        "--include-features", action="store_true", help="put the features in each decision"
    )
    con.add_argument("--no-dataset", action="store_true", help="do not record consumed data")
    con.add_argument("-v", "--verbose", action="store_true")
    add_kafka_arguments(con, default_bootstrap=None)
    rollout = con.add_argument_group("shadow scoring and automatic rollout")
    rollout.add_argument(
        "--shadow",
        choices=("on", "off"),
        default="on",
        help="score each decided batch again with the 'canary' label when one exists, never "
        "acting on it (default %(default)s)",
    )
    rollout.add_argument(
        "--shadow-timeout-seconds",
        type=float,
        default=1.0,
        help="one shadow call's timeout; a slower canary counts an error (default %(default)s)",
    )
    rollout.add_argument(
        "--shadow-max-queued",
        type=int,
        default=2,
        help="decided batches waiting for the shadow worker; a batch that finds the queue "
        "full is not shadowed (default %(default)s)",
    )
    rollout.add_argument(
        "--auto-rollout",
        choices=("on", "off"),
        default="on",
        help="promote or roll back the canary by the promotion rule (docs/serving.md); only "
        "the consumer owning partition 0 of the transactions topic acts (default %(default)s)",
    )
    rollout.add_argument(
        "--model-config-file",
        help="the server's model config file the rollout edits (default: models.config beside "
        "the model base path)",
    )
    rollout.add_argument(
        "--rollout-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a threshold of the promotion rule (monitoring.promotion.PromotionConfig)",
    )
    drift = con.add_argument_group("drift monitoring and retraining")
    drift.add_argument(
        "--drift-window", type=int, default=0, help="transactions per drift window (0: off)"
    )
    drift.add_argument(
        "--drift-window-time",
        help="event-time drift windows of this span instead (e.g. 24h), evaluated every "
        "--drift-hop",
    )
    drift.add_argument("--drift-hop", default="1h", help="with --drift-window-time")
    drift.add_argument("--drift-sustained", type=int, default=2, help="windows in a row")
    drift.add_argument("--drift-psi", type=float, default=0.2, help="PSI threshold")
    drift.add_argument("--drift-js", type=float, default=0.1, help="Jensen-Shannon distance")
    drift.add_argument(
        "--drift-night-z",
        type=float,
        default=DriftConfig.night_z_threshold,
        help="night-excess threshold: a (day/night x bin) cell this many standard deviations "
        "above training drifts (0: off)",
    )
    drift.add_argument(
        "--drift-alert-bounds",
        default="0.33,3.0",
        help="alert rate / expected rate outside LOW,HIGH is drift",
    )
    drift.add_argument(
        "--drift-state-dir",
        help="one drift state file per replica in this directory, named after the pod, for "
        "replicas sharing a volume (a new pod adopts the file of one that is gone); default: "
        "<state-dir>/drift_state.json",
    )
    drift.add_argument(
        "--drift-state-orphaned-after",
        default="15m",
        help="with --drift-state-dir: a state file not written for this long is a gone pod's",
    )
    drift.add_argument(
        "--retrain", choices=("off", "local", "cluster"), default="off", help="on sustained drift"
    )
    drift.add_argument("--retrain-run-dir", help="history, lock and run artifacts")
    drift.add_argument("--retrain-base-data", help="historical labelled data to merge")
    drift.add_argument("--retrain-train-days", type=int, default=42)
    drift.add_argument("--retrain-eval-days", type=int, default=7)
    drift.add_argument("--retrain-cooldown", type=float, default=3600.0, help="seconds")
    drift.add_argument(
        "--retrain-label-wait-days",
        type=float,
        default=None,
        help="start the retrain this long after drift began (default: label delay + eval days "
        "+ 7 days of the new behaviour to learn from)",
    )
    drift.add_argument("--retrain-host", help="KFP endpoint (cluster mode)")
    drift.add_argument(
        "--retrain-cluster-data-path",
        help="cluster mode: the retraining dataset's path as the pipeline's pods see it",
    )
    drift.add_argument(
        "--retrain-export-path",
        help="cluster mode: write the merged retraining dataset here first (a volume the "
        "pipeline's pods mount)",
    )
    drift.add_argument(
        "--retrain-set", action="append", metavar="NAME=VALUE", help="pipeline parameter"
    )
    drift.add_argument(
        "--retrain-kfp-token",
        help="cluster mode: the ServiceAccount token projected for the KFP API (audience "
        "pipelines.kubeflow.org), e.g. /var/run/secrets/kubeflow/pipelines/token",
    )
    drift.add_argument(
        "--retrain-lease",
        help="cluster mode with several replicas: claim each drift event on this Kubernetes "
        "Lease (in-cluster credentials) so that one replica submits its run",
    )
    drift.add_argument(
        "--retrain-lease-namespace", help="the Lease's namespace (default: the pod's own)"
    )
    drift.add_argument(
        "--retrain-claim-span",
        default="7d",
        help="with --retrain-lease: drift events whose retrain is due less than this (event "
        "time) after a claimed one are that same event (default 7d)",
    )
