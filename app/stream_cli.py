"""`fraud broker|topics|stream ...`: command-line entry points of the streaming layer.

``add_subcommands(subparsers)`` registers the commands on the platform CLI's subparsers; each
handler takes ``(args, settings=None)`` like the other ``fraud`` commands (``settings`` defaults
to ``Settings.from_env()``). ``python -m app.stream_cli ...`` runs the same commands alone.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from core import contract as c
from core.settings import Settings

log = logging.getLogger("streaming")


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.from_env()


def _setup_logging(verbose: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # kafka-python logs every reconnect attempt at WARNING/ERROR while a broker starts or stops.
    logging.getLogger("kafka").setLevel(logging.CRITICAL if not verbose else logging.INFO)


def _bootstrap(args: argparse.Namespace, settings: Settings) -> str:
    return args.bootstrap_servers or settings.bootstrap_servers


def _security(args: argparse.Namespace) -> Any:
    from streaming.kafka_config import security_from_args

    return security_from_args(args)


# --- broker ----------------------------------------------------------------------------------


def _broker_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.state_dir) if args.state_dir else settings.run_dir / "broker"


def broker_start(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.broker import start_daemon

    settings = _settings(settings)
    info = start_daemon(_broker_dir(args, settings), port=args.port, host=args.host)
    print(
        f"broker started: pid {info.pid}, bootstrap servers {info.bootstrap_servers}, "
        f"log {info.log_file}"
    )
    print(f"export FRAUD_BOOTSTRAP_SERVERS={info.bootstrap_servers}")
    return 0


def broker_stop(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.broker import stop_daemon

    info = stop_daemon(_broker_dir(args, _settings(settings)))
    print("broker stopped" if info else "no broker was running")
    return 0


def broker_run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.broker import run_foreground

    run_foreground(args.host, args.port, args.advertised_host)
    return 0  # not reached: the broker replaced this process


def broker_status(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.broker import daemon_status

    status = daemon_status(_broker_dir(args, _settings(settings)))
    print(status.describe())
    return 0 if status.reachable else 1


# --- topics ----------------------------------------------------------------------------------


def topics_create(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.broker import create_topics

    settings = _settings(settings)
    result = create_topics(
        _bootstrap(args, settings),
        settings.topics,
        partitions=args.partitions,
        replication=args.replication,
        security=_security(args),
    )
    for name, what in result.items():
        print(f"{name}: {what}")
    return 0


# --- stream ----------------------------------------------------------------------------------


def stream_replay(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.replay import Pacing, replay

    _setup_logging(args.verbose)
    settings = _settings(settings)
    pacing = Pacing(rate=args.rate, speedup=args.speedup)
    result = replay(
        args.input or settings.raw_data,
        _bootstrap(args, settings),
        topics=settings.topics,
        pacing=pacing,
        label_delay_days=args.label_delay_days or settings.label_delay_days,
        limit=args.limit,
        trailing_labels=not args.skip_trailing_labels,
        progress=not args.no_progress,
        security=_security(args),
    )
    print(
        f"published {result.transactions:,} transactions and {result.labels:,} labels "
        f"({result.trailing_labels:,} after the last transaction) in {result.seconds:.1f} s "
        f"({result.rate:,.0f} tx/s)"
    )
    return 0


def stream_consume(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.metrics import StreamMetrics
    from streaming.review_labels import label_endpoint
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    _setup_logging(args.verbose)
    settings = _settings(settings)
    default_url = settings.serving_grpc_target if args.serving_protocol == "grpc" else None
    serving_url = args.serving_url or default_url or settings.serving_url
    model_name = args.model_name or settings.model_name
    config = ConsumerConfig(
        bootstrap_servers=_bootstrap(args, settings),
        group_id=args.group_id,
        topics=settings.topics,
        state_dir=Path(args.state_dir) if args.state_dir else settings.run_dir / "stream",
        model_name=model_name,
        batch_size=args.batch_size,
        max_messages=args.max_messages,
        exit_when_idle_s=args.exit_when_idle_seconds,
        snapshot_interval_s=args.snapshot_interval_seconds,
        include_features=args.include_features,
        label_delay_days=args.label_delay_days or settings.label_delay_days,
        lag_bound_s=args.lag_bound_seconds,
        decision_deadline_s=args.decision_deadline_seconds,
        fallback_decision=args.fallback_decision,
        max_fallback_backlog=args.max_fallback_backlog,
        max_pending_labels=args.max_pending_labels,
        recent_ids=args.recent_ids,
        write_dataset=not args.no_dataset,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=max(1_000, args.session_timeout_ms // 3),
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        slow_batch_s=args.slow_batch_ms / 1000,
        labels_fetch_max_wait_ms=args.labels_fetch_max_wait_ms,
        max_event_time_skew_s=args.max_event_time_skew,
        max_message_bytes=args.max_message_bytes,
        dead_letter_max_payload_bytes=args.dead_letter_max_payload_bytes,
        security=_security(args),
    )
    label = None if args.serving_label.strip().lower() == "none" else args.serving_label
    client = build_model_client(
        serving_url,
        model_name,
        timeout_s=args.serving_timeout_seconds,
        protocol=args.serving_protocol,
        label=label,
    )
    thresholds = ThresholdStore(Path(args.model_base_path or settings.model_base_path))
    scorer = Scorer(client, thresholds)
    metrics = StreamMetrics()
    drift_on = args.drift_window or args.drift_window_time
    drift_loop = _drift_loop(args, settings, config, metrics) if drift_on else None
    shadow, controller = None, None
    if args.shadow == "on":
        shadow, controller = _shadow(
            args, settings, config, serving_url, metrics, thresholds, drift_loop
        )
    consumer = StreamConsumer(config, scorer, metrics, drift=drift_loop, shadow=shadow)
    if controller is not None:
        controller.is_decider = consumer.rollout_decider.is_set
    reviews = _review_publisher(args, config)
    server = (
        metrics.serve(
            args.metrics_port,
            addr=args.metrics_host,
            health=consumer.health,
            labels=None if reviews is None else label_endpoint(reviews),
        )
        if args.metrics_port
        else None
    )

    def _request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current batch, then exiting", signum)
        consumer.stop()

    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a stuck consumer
    # is without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        summary = consumer.run()
    finally:
        faulthandler.unregister(signal.SIGUSR1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
        if reviews is not None:
            reviews.close()
    print(summary.describe())
    return 0


def _review_publisher(args: argparse.Namespace, config: Any) -> Any:
    """The publisher behind POST /labels, with ``--review-ledger`` (which needs the port)."""
    if args.review_ledger is None:
        return None
    if not args.metrics_port:
        raise ValueError("--review-ledger serves POST /labels on --metrics-port: set both")
    from streaming.review_labels import ReviewLabelPublisher

    return ReviewLabelPublisher(
        config.bootstrap_servers, args.review_ledger, config.topics, config.security
    )


# --- registration ----------------------------------------------------------------------------


def _drift_loop(args: argparse.Namespace, settings: Settings, config: Any, metrics: Any) -> Any:
    """The drift monitor (+ retrain trigger) and the model-quality monitor on the consumer's own
    metrics registry."""
    from core.durations import parse_duration
    from monitoring.drift import DriftConfig
    from monitoring.drift_replicas import drift_files
    from monitoring.loop import DriftLoop, DriftLoopConfig
    from monitoring.metrics import DriftMetrics, QualityMetrics
    from monitoring.quality import QualityMonitor

    low, high = (float(x) for x in args.drift_alert_bounds.split(","))
    timed = {}
    if args.drift_window_time:
        timed = {
            "window_seconds": parse_duration(args.drift_window_time),
            "hop_seconds": parse_duration(args.drift_hop),
        }
    drift_config = DriftConfig(
        window_size=args.drift_window or DriftConfig.window_size,
        psi_threshold=args.drift_psi,
        js_threshold=args.drift_js,
        alert_rate_bounds=(low, high),
        sustained_windows=args.drift_sustained,
        min_samples=min(1_000, args.drift_window) if args.drift_window else 1_000,
        night_z_threshold=None if args.drift_night_z <= 0 else args.drift_night_z,
        **timed,
    )
    model_base_path = Path(args.model_base_path or settings.model_base_path)
    trigger = None
    if args.retrain != "off":
        trigger = _retrain_trigger(args, settings, config, model_base_path, metrics)
    wait_days = args.retrain_label_wait_days
    if wait_days is None:
        wait_days = config.label_delay_days + args.retrain_eval_days + 7
    state_path, windows_log = drift_files(
        config.state_dir,
        Path(args.drift_state_dir) if args.drift_state_dir else None,
        socket.gethostname(),
        parse_duration(args.drift_state_orphaned_after),
    )
    loop_config = DriftLoopConfig(
        model_base_path=model_base_path,
        windows_log=windows_log,
        warmup_s=config.label_delay_days * c.SECONDS_PER_DAY + max(c.TERMINAL_WINDOWS.values()),
        label_wait_s=wait_days * c.SECONDS_PER_DAY,
        state_path=state_path,
    )
    quality = QualityMonitor(
        QualityMetrics(metrics.registry),
        censor_after_s=(config.label_delay_days + 7) * c.SECONDS_PER_DAY,
    )
    return DriftLoop(
        loop_config, drift_config, DriftMetrics(metrics.registry), trigger, quality=quality
    )


def _retrain_trigger(
    args: argparse.Namespace,
    settings: Settings,
    config: Any,
    model_base_path: Path,
    metrics: Any,
) -> Any:
    """The drift-triggered retrain: local, or a KFP run (named after its windows, claimed on a
    Lease with ``--retrain-lease``) in cluster mode."""
    from app.retrain_cli import runner_for
    from core.durations import parse_duration
    from monitoring.metrics import RetrainMetrics
    from monitoring.retrain import CLUSTER, LOCAL, RetrainConfig, RetrainTrigger
    from monitoring.retrain_claim import ClaimedRunner, LeaseClaim
    from pipelines.params import parse_params

    run_dir = Path(args.retrain_run_dir) if args.retrain_run_dir else settings.run_dir / "retrain"
    retrain_config = RetrainConfig(
        run_dir=run_dir,
        mode=args.retrain,
        cooldown_s=args.retrain_cooldown,
        state_dir=config.state_dir,
        base_data=Path(args.retrain_base_data) if args.retrain_base_data else None,
        train_days=args.retrain_train_days,
        eval_days=args.retrain_eval_days,
        label_delay_days=config.label_delay_days,
        model_base_path=model_base_path,
        model_name=config.model_name,
        pipeline_params=parse_params(args.retrain_set, "--retrain-set"),
        host=args.retrain_host,
        cluster_data_path=args.retrain_cluster_data_path,
        export_path=Path(args.retrain_export_path) if args.retrain_export_path else None,
        kfp_token_path=Path(args.retrain_kfp_token) if args.retrain_kfp_token else None,
    )
    runner = runner_for(retrain_config, dedupe=args.retrain == CLUSTER)
    if args.retrain_lease:
        if args.retrain != CLUSTER:
            raise ValueError("--retrain-lease claims KFP runs: it needs --retrain cluster")
        claim = LeaseClaim.in_cluster(
            args.retrain_lease,
            holder=socket.gethostname(),
            span_s=parse_duration(args.retrain_claim_span),
            namespace=args.retrain_lease_namespace,
        )
        runner = ClaimedRunner(runner, claim)
    if args.retrain == LOCAL:
        _share_serving_settings(args, settings)
    return RetrainTrigger(retrain_config, runner, metrics=RetrainMetrics(metrics.registry))


def _share_serving_settings(args: argparse.Namespace, settings: Settings) -> None:
    """A local retrain's push step runs in a child process and reads its settings from the
    environment: hand it this consumer's server and model config file, so the version it pushes
    is deployed (as canary, by FRAUD_ROLLOUT_MODE) where this consumer shadow-scores it."""
    os.environ["FRAUD_SERVING_URL"] = _rest_url(args, settings)
    if args.model_config_file:
        os.environ["FRAUD_MODEL_CONFIG_FILE"] = str(Path(args.model_config_file).resolve())


def _shadow(
    args: argparse.Namespace,
    settings: Settings,
    config: Any,
    serving_url: str,
    metrics: Any,
    thresholds: Any,
    drift_loop: Any,
) -> tuple[Any, Any]:
    """The shadow scorer and its canary controller (which acts only with --auto-rollout on)."""
    from monitoring.canary import drift_pushed, shadow_scoring
    from monitoring.promotion import PromotionConfig
    from serving.rollout import Rollout, default_config_path

    base_path = Path(args.model_base_path or settings.model_base_path)
    rollout = None
    if args.auto_rollout == "on":
        config_file = args.model_config_file
        rollout = Rollout(
            config_path=Path(config_file) if config_file else default_config_path(base_path),
            model_name=config.model_name,
            base_path=base_path,
            serving_url=_rest_url(args, settings),
        )
    trigger = drift_loop.trigger if drift_loop is not None else None
    return shadow_scoring(
        config,
        serving_url,
        thresholds,
        metrics,
        PromotionConfig.parse(args.rollout_set),
        rollout,
        drift_triggered=drift_pushed(trigger) if trigger is not None else lambda v: False,
        timeout_s=args.shadow_timeout_seconds,
        max_queued=args.shadow_max_queued,
        protocol=args.serving_protocol,
    )


def _rest_url(args: argparse.Namespace, settings: Settings) -> str:
    """The model server's REST base URL, which deployment and the rollout's status checks use
    whatever protocol the consumer scores with."""
    if args.serving_protocol == "rest" and args.serving_url:
        return args.serving_url
    return settings.serving_url


def _kafka_args(parser: argparse.ArgumentParser) -> None:
    from streaming.kafka_config import add_kafka_arguments

    add_kafka_arguments(parser, default_bootstrap=None)


def add_subcommands(subparsers: Any) -> None:
    """Register ``broker``, ``topics`` and ``stream`` on the ``fraud`` CLI."""
    from app.consume_options import add_consume_arguments

    broker = subparsers.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu)")
    broker_sub = broker.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    for name, func, helptext in (
        ("start", broker_start, "start the in-memory broker in the background"),
        ("stop", broker_stop, "stop the background broker"),
        ("status", broker_status, "show pid, port and whether the broker answers"),
    ):
        p = broker_sub.add_parser(name, help=helptext)
        p.add_argument("--state-dir", help="pid and log files (default: <run_dir>/broker)")
        if name == "start":
            p.add_argument("--port", type=int, help="listen port (default: a free one)")
            p.add_argument("--host", default="127.0.0.1", help="listen address")
        p.set_defaults(func=func)
    run = broker_sub.add_parser(
        "run", help="run the in-memory broker in the foreground (a container's main process)"
    )
    run.add_argument("--host", default="0.0.0.0", help="listen address")
    run.add_argument("--port", type=int, default=9092, help="listen port")
    run.add_argument(
        "--advertised-host",
        help="the name clients connect to, e.g. the container's service name (default: --host)",
    )
    run.set_defaults(func=broker_run)

    topics = subparsers.add_parser("topics", help="manage the platform's Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = topics_sub.add_parser("create", help="create every topic (existing ones are kept)")
    create.add_argument("--partitions", type=int, default=3)
    create.add_argument("--replication", type=int, default=1)
    _kafka_args(create)
    create.set_defaults(func=topics_create)

    stream = subparsers.add_parser("stream", help="real-time scoring over Kafka")
    stream_sub = stream.add_subparsers(dest="stream_command", metavar="ACTION", required=True)

    rep = stream_sub.add_parser(
        "replay", help="publish a raw dataset to the transactions and labels topics in time order"
    )
    rep.add_argument("input", nargs="?", type=Path, help="raw CSV/Parquet (default: raw_data)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="transactions per second")
    pace.add_argument("--speedup", type=float, help="event time runs X times faster than wall")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default)")
    rep.add_argument("--limit", type=int, help="only the first N transactions")
    rep.add_argument("--label-delay-days", type=int, help="when the file has no label_available_at")
    rep.add_argument(
        "--skip-trailing-labels",
        action="store_true",
        help="do not publish labels that become available after the last transaction",
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument("-v", "--verbose", action="store_true")
    _kafka_args(rep)
    rep.set_defaults(func=stream_replay)

    con = stream_sub.add_parser(
        "consume", help="score transactions: features, batched :predict, decisions and alerts"
    )
    add_consume_arguments(con)
    con.set_defaults(func=stream_consume)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.stream_cli", description="Streaming layer of the fraud platform."
    )
    add_subcommands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.from_env()) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"{args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
