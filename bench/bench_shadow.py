"""Shadow scoring's cost: the scoring consumer with a canary shadow-scoring every batch, and
without.

One embedded broker and one model server driven by a model config file: version 1 labelled
``stable``, version 2 labelled ``canary``. Two measurements, each with shadow scoring off and
on (``--shadow off|on``; the automatic rollout never acts here):

1. end-to-end latency (transaction produced -> decision produced) at a steady offered rate, the
   consumer as its own process as in production (bench.stream_latency.latency_run), each run on
   topics of its own; the p99 of each mode's pooled latencies;
2. throughput: the consumer in this process over a backlog of ``--transactions``.

Each runs once with shadow scoring off as a warm-up that is not counted (the broker and the
server speed up over the first runs), then in the order off, on, on, off, so that neither the
warm-up nor the machine's load favours either mode. It prints on / off side by side.

    python -m bench.bench_shadow [--transactions 60000] [--latency-rate 500] [--no-record]

The figures are recorded in bench/results.json and README.md's table (``bench.results``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import results
from bench.bench_stream import _tests_on_path
from bench.stream_latency import WARMUP_TRANSACTIONS, latencies, latency_run

MODES = ("off", "on")
ORDER = ("off", "on", "on", "off")


def serve_stable_and_canary(fx: Any, work: Path) -> tuple[Any, Path]:
    """A model server with version 1 stable and version 2 canary; (server, model base)."""
    from serving._launch import ServerProcess

    base = work / "models" / fx.MODEL_NAME
    store = fx.build_model_store()
    for version in (1, 2):
        fx.install_version(store.fraud, base, version, with_metadata=True)
    config = base.parent / "models.config"
    config.write_text(
        "model_config_list { config {\n"
        f'  name: "{fx.MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow"\n'
        "  model_version_policy { specific { versions: 1 versions: 2 } }\n"
        '  version_labels { key: "stable" value: 1 }\n'
        '  version_labels { key: "canary" value: 2 }\n'
        "} }\n"
    )
    server = ServerProcess(
        [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"],
        log_path=work / "server.log",
    )
    return fx.start_serving(server), base


def consumer_throughput(
    fx: Any,
    bootstrap: str,
    frame: Any,
    server_url: str,
    base: Path,
    work: Path,
    mode: str,
    run: str,
) -> tuple[float, float]:
    """Transactions/s of the in-process consumer over ``frame`` as a backlog, and the share of
    them the canary shadow-scored."""
    from monitoring.canary import shadow_scoring
    from monitoring.promotion import PromotionConfig
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.metrics import StreamMetrics
    from streaming.replay import replay_frame
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    topics = fx.make_topics(bootstrap, f"bench-shadow-{mode}-{run}")
    replay_frame(frame, bootstrap, topics, progress=False)
    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=f"bench-shadow-{mode}-{run}",
        topics=topics,
        state_dir=work / f"state-{mode}-{run}",
        batch_size=1000,
        max_messages=len(frame),
    )
    metrics = StreamMetrics()
    thresholds = ThresholdStore(base)
    scorer = Scorer(build_model_client(server_url, fx.MODEL_NAME, label="stable"), thresholds)
    shadow = None
    if mode == "on":
        shadow, _ = shadow_scoring(
            config, server_url, thresholds, metrics, PromotionConfig(), rollout=None
        )
    summary = StreamConsumer(config, scorer, metrics, shadow=shadow).run()
    if summary.decided != len(frame):
        raise RuntimeError(f"consumer handled {summary.describe()}, expected {len(frame)}")
    shadowed = metrics.registry.get_sample_value("fraud_stream_shadow_transactions_total") or 0
    return len(frame) / summary.active_seconds, shadowed / len(frame)


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import numpy as np

    from streaming.broker import EmbeddedBroker

    fx = _tests_on_path()
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    out: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    try:
        server, base = serve_stable_and_canary(fx, work)
        try:
            frame = fx.simulated(args.customers, args.days, seed=args.seed)
            lat_n = int(args.latency_rate * args.latency_seconds) + WARMUP_TRANSACTIONS
            n = min(args.transactions, len(frame) - lat_n)
            if n < 1000:
                raise SystemExit(
                    f"{len(frame):,} simulated transactions leave {n:,} for the backlog after "
                    f"{lat_n:,} for the latency runs: raise --days or --customers"
                )
            with EmbeddedBroker(log_path=work / "broker.log") as broker:
                bootstrap = broker.bootstrap_servers
                # Each measurement in the order off, on, on, off, after one discarded warm-up
                # run: the broker and the server speed up over the first runs, and a fixed
                # order would credit that to whichever mode came later.
                part = frame.iloc[n : n + lat_n].reset_index(drop=True)
                timed_by_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
                for i, mode in enumerate(("warm-up", *ORDER)):
                    timed, _ = latency_run(
                        fx,
                        bootstrap,
                        part,
                        frame.iloc[:n],
                        args.latency_rate,
                        server.url,
                        base,
                        work,
                        1000,
                        2.0,
                        f"shadow-{mode}-{i}",
                        extra=("--shadow", "off" if mode == "warm-up" else mode)
                        + ("--auto-rollout", "off"),
                    )
                    p99 = float(np.percentile(latencies(timed), 99))
                    print(f"shadow {mode}: p99 end to end {p99:.1f} ms", flush=True)
                    if mode in timed_by_mode:
                        timed_by_mode[mode].extend(latencies(timed))
                for mode in MODES:
                    out[mode]["p99_ms"] = float(np.percentile(timed_by_mode[mode], 99))
                rates: dict[str, list[float]] = {mode: [] for mode in MODES}
                for i, mode in enumerate(("warm-up", *ORDER)):
                    rate, share = consumer_throughput(
                        fx,
                        bootstrap,
                        frame.iloc[:n],
                        server.url,
                        base,
                        work,
                        "off" if mode == "warm-up" else mode,
                        str(i),
                    )
                    print(
                        f"shadow {mode}: {rate:,.0f} tx/s ({share:.0%} shadow-scored)", flush=True
                    )
                    if mode in rates:
                        rates[mode].append(rate)
                    if mode == "on":
                        out[mode]["shadowed_share"] = share
                for mode in MODES:
                    out[mode]["tx_per_s"] = float(np.mean(rates[mode]))
        finally:
            server.stop()
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out


def figures(out: dict[str, dict[str, float]], args: argparse.Namespace, command: str) -> list[Any]:
    detail = (
        f"{args.transactions:,} transactions backlog, means of 2 runs each; latency at "
        f"{args.latency_rate:g} tx/s, 2 runs of {args.latency_seconds:g} s each; a warm-up run first"
    )
    made = []
    for mode in MODES:
        made.append(
            results.measured(
                f"shadow.throughput_{mode}",
                f"Consumer throughput, shadow scoring {mode}",
                out[mode]["tx_per_s"],
                "tx/s",
                "transactions decided per second of the consumer's busy time",
                command,
                detail=detail,
            )
        )
        made.append(
            results.measured(
                f"shadow.p99_{mode}_ms",
                f"End-to-end p99, shadow scoring {mode}",
                out[mode]["p99_ms"],
                "ms",
                "99th percentile of transaction produced -> decision produced",
                command,
                detail=detail,
            )
        )
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_shadow", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--transactions", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--latency-rate", type=float, default=500.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    print(
        f"shadow off: {out['off']['tx_per_s']:,.0f} tx/s, p99 {out['off']['p99_ms']:.1f} ms; "
        f"shadow on: {out['on']['tx_per_s']:,.0f} tx/s, p99 {out['on']['p99_ms']:.1f} ms "
        f"({out['on'].get('shadowed_share', 0):.0%} of transactions shadow-scored)"
    )
    print(
        f"shadow on / off: throughput {out['on']['tx_per_s'] / out['off']['tx_per_s']:.2f}, "
        f"p99 {out['on']['p99_ms'] / out['off']['p99_ms']:.2f}"
    )
    results.publish(args, figures(out, args, results.command_line("bench.bench_shadow", argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
