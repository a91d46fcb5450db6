"""Streaming benchmark: the scoring consumer against its ceiling and the naive design.

One run, one embedded broker (Tansu, loopback) and one model server subprocess started here:

1. raw pipe: a kafka-python group consumer that reads each transaction and produces the same
   JSON to another topic, committing per poll batch: no features, no scoring. The ceiling.
2. per-message design: the same loop computing features and making ONE REST :predict call per
   transaction.
3. our consumer (``streaming.consumer``): features per partition, labels, one :predict per
   poll batch, decisions + alerts, acks before commit, snapshots.

Each of (1), (2) and (3) runs twice, in the order (1) (2) (3) (3) (2) (1), and the means are
compared: a single 20,000-message run moves by up to 30 % with the machine's load and the
broker's fill, and the order keeps either from favouring (3).

And the end-to-end latency of (3) (transaction produced -> decision produced) at a steady
offered rate (500 tx/s by default), with the consumer as its own process as in production, next
to that of (1) relaying the same paced stream as its own process: the latency floor of this
broker and client. Both are measured first, while the broker is still empty, as several short
runs each on topics of their own (4 x 5 s by default): every fetch and ListOffsets of Tansu's
in-memory store takes longer the more record batches the partition holds (about 1 ms more per
1,000), while Kafka looks offsets up in an index. One long run on the same topics is printed
beside them, and ``broker_fill_cost`` measures that growth in the same run.

    python -m bench.bench_stream [--transactions 20000] [--per-message 1500] [--json out.json]

Message counts are bounded and every socket is on 127.0.0.1. The ratios and latencies are
recorded in bench/results.json and README.md's table (``bench.results``). The designs are in
``bench.stream_designs``, the latency runs in ``bench.stream_latency``, the printed table and the
recorded figures in ``bench.stream_report``; this module starts the services and runs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import results
from bench.stream_designs import our_consumer, per_message, raw_pipe, relay
from bench.stream_latency import (
    WARMUP_TRANSACTIONS,
    Timed,
    broker_fill_cost,
    cpu_times,
    latencies,
    latency_run,
    p99_by_window,
    raw_latency_run,
    steal_pct,
)
from bench.stream_report import BenchResult, figures


def _tests_on_path() -> Any:
    """The streaming test fixtures build the benchmark's model (the contract's signature)."""
    tests = str(results.REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import stream_fixtures

    return stream_fixtures


def run(args: argparse.Namespace) -> BenchResult:
    import numpy as np

    from serving.client import ModelClient
    from streaming.broker import EmbeddedBroker
    from streaming.replay import replay_frame

    fx = _tests_on_path()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        model_base = work / "models" / fx.MODEL_NAME
        model_base.mkdir(parents=True)
        fx.install_version(fx.build_model_store().fraud, model_base, 1, with_metadata=True)
        server = fx.start_model_server(model_base, work)
        try:
            frame = fx.simulated(args.customers, args.days, seed=args.seed)
            n = min(args.transactions, len(frame))
            lat_n = int(args.latency_rate * args.latency_seconds) + WARMUP_TRANSACTIONS
            print(
                f"dataset: {len(frame):,} simulated transactions; model server {server.url}",
                flush=True,
            )
            with EmbeddedBroker(log_path=work / "broker.log") as broker:
                bootstrap = broker.bootstrap_servers
                # Latency first. Every fetch and ListOffsets of Tansu's in-memory store costs
                # more the more batches the partition holds (``broker_fill_cost``), and a paced
                # 500 tx/s stream adds ~170 batches a second to each transactions and labels
                # partition. The target is measured over short runs, each on topics of its own,
                # where that cost stays near an empty partition's (as on Kafka, whose offset
                # index keeps it flat); one long run on the same topics is printed beside it.
                # Mid-stream, as a live consumer sees it: with the labels of the week before
                # falling due as it runs (about one per transaction).
                latency_start = n if n + lat_n <= len(frame) else 0
                latency_frame = frame.iloc[latency_start : latency_start + lat_n]
                latency_frame = latency_frame.reset_index(drop=True)
                segments = max(1, args.latency_segments)
                seg_n = (lat_n - WARMUP_TRANSACTIONS) // segments

                def relay_and_consumer(first: int, size: int, tag: str) -> tuple[Timed, Timed, int]:
                    """(1) then (3) on ``size`` paced transactions from the latency frame's
                    ``first``, each on topics of its own; and the labels published among them."""
                    part = latency_frame.iloc[first : first + size].reset_index(drop=True)
                    prior = frame.iloc[: latency_start + first]
                    raw_timed = raw_latency_run(
                        fx, bootstrap, part, prior, args.latency_rate, work, tag
                    )
                    timed, labels = latency_run(
                        fx,
                        bootstrap,
                        part,
                        prior,
                        args.latency_rate,
                        server.url,
                        model_base,
                        work,
                        args.latency_batch_size,
                        args.snapshot_interval,
                        tag,
                    )
                    return raw_timed, timed, labels

                raw_segs: list[Timed] = []
                segs: list[Timed] = []
                seg_labels = 0
                cpu_before = cpu_times()
                for i in range(segments):
                    raw_timed, timed, labels = relay_and_consumer(
                        i * seg_n, WARMUP_TRANSACTIONS + seg_n, f"s{i}"
                    )
                    seg_labels += labels
                    raw_segs.append(raw_timed)
                    segs.append(timed)
                    print(
                        f"latency run {i + 1}/{segments} ({seg_n / args.latency_rate:g} s at "
                        f"{args.latency_rate:.0f} tx/s): p99 (1) "
                        f"{np.percentile(latencies(raw_timed), 99):.1f} ms, (3) "
                        f"{np.percentile(latencies(timed), 99):.1f} ms",
                        flush=True,
                    )
                seg_steal = steal_pct(cpu_before, cpu_times())
                cpu_before = cpu_times()
                raw_long, long, _ = relay_and_consumer(0, lat_n, "long")
                long_steal = steal_pct(cpu_before, cpu_times())
                print(
                    f"latency over one {args.latency_seconds:g} s run: p99 (1) "
                    f"{np.percentile(latencies(raw_long), 99):.1f} ms, (3) "
                    f"{np.percentile(latencies(long), 99):.1f} ms",
                    flush=True,
                )
                broker_cost = broker_fill_cost(fx, bootstrap)
                print(f"broker cost per request as a partition fills: {broker_cost}", flush=True)
                topics = fx.make_topics(bootstrap, "bench")
                replay_frame(frame.iloc[:n], bootstrap, topics, progress=False)
                client = ModelClient(server.url, fx.MODEL_NAME)
                client.wait_until_available(timeout_s=120)

                # Every design runs twice, (1) (2) (3) (3) (2) (1), and the means are used: the
                # broker slows as it fills and the machine's load drifts, and neither must favour (3).
                per_n = min(args.per_message, n)

                def ceiling(run: str) -> float:
                    tps = raw_pipe(
                        bootstrap, topics.transactions, "bench-raw-out", n, args.batch_size, run
                    )
                    print(f"(1) raw pipe, run {run}: {tps:,.0f} tx/s", flush=True)
                    return tps

                def naive_design(run: str) -> float:
                    tps = per_message(
                        bootstrap,
                        topics.transactions,
                        "bench-per-message-out",
                        per_n,
                        args.batch_size,
                        client,
                        fx.LABEL_DELAY_DAYS,
                        run,
                    )
                    print(f"(2) per-message, run {run}: {tps:,.0f} tx/s", flush=True)
                    return tps

                def scoring_consumer(run: str) -> float:
                    tps = our_consumer(
                        bootstrap,
                        topics,
                        n,
                        args.batch_size,
                        server.url,
                        model_base,
                        work / f"state-{run}",
                        args.snapshot_interval,
                        run,
                    )
                    print(f"(3) scoring consumer, run {run}: {tps:,.0f} tx/s", flush=True)
                    return tps

                raws, naives = [ceiling("a")], [naive_design("a")]
                ours_runs = [scoring_consumer("a"), scoring_consumer("b")]
                naives.append(naive_design("b"))
                raws.append(ceiling("b"))
                ours = float(np.mean(ours_runs))
                raw, naive = float(np.mean(raws)), float(np.mean(naives))
        finally:
            server.stop()
        e2e_arr = np.asarray([x for seg in segs for x in latencies(seg)], dtype=float)
        raw_e2e = np.asarray([x for seg in raw_segs for x in latencies(seg)], dtype=float)
        window_s = seg_n / args.latency_rate
        return BenchResult(
            transactions=n,
            per_message_transactions=per_n,
            raw_pipe_tps=raw,
            raw_pipe_runs=raws,
            per_message_tps=naive,
            per_message_runs=naives,
            consumer_tps=ours,
            consumer_runs=ours_runs,
            latency_rate=args.latency_rate,
            latency_transactions=len(e2e_arr),
            latency_labels=seg_labels,
            latency_p50_ms=float(np.percentile(e2e_arr, 50)),
            latency_p99_ms=float(np.percentile(e2e_arr, 99)),
            latency_max_ms=float(e2e_arr.max()),
            raw_latency_p50_ms=float(np.percentile(raw_e2e, 50)),
            raw_latency_p99_ms=float(np.percentile(raw_e2e, 99)),
            latency_runs=segments,
            latency_run_seconds=seg_n / args.latency_rate,
            latency_run_p99_ms=[float(np.percentile(latencies(seg), 99)) for seg in segs],
            raw_latency_run_p99_ms=[float(np.percentile(latencies(seg), 99)) for seg in raw_segs],
            long_run_seconds=args.latency_seconds,
            long_latency_p50_ms=float(np.percentile(latencies(long), 50)),
            long_latency_p99_ms=float(np.percentile(latencies(long), 99)),
            long_raw_latency_p99_ms=float(np.percentile(latencies(raw_long), 99)),
            long_latency_window_p99_ms=p99_by_window(long, window_s),
            long_raw_latency_window_p99_ms=p99_by_window(raw_long, window_s),
            broker_cost=broker_cost,
            latency_steal_pct=seg_steal,
            long_steal_pct=long_steal,
            batch_size=args.batch_size,
            snapshot_interval_s=args.snapshot_interval,
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000, help="for (1) and (3)")
    parser.add_argument("--per-message", type=int, default=1_500, help="for (2)")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--latency-batch-size", type=int, default=1000)
    parser.add_argument("--snapshot-interval", type=float, default=2.0)
    parser.add_argument("--latency-rate", type=float, default=500.0)
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=20.0,
        help="paced traffic in all, split into --latency-runs runs on topics of their own",
    )
    parser.add_argument("--latency-runs", dest="latency_segments", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    results.add_arguments(parser)
    parser.add_argument(
        "--relay",
        nargs=3,
        metavar=("BOOTSTRAP", "SOURCE", "SINK"),
        help=argparse.SUPPRESS,  # internal: the raw pipe's latency process
    )
    args = parser.parse_args(argv)
    if args.relay:
        relay(*args.relay, group_id=f"bench-relay-{os.getpid()}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    result = run(args)
    print()
    print(result.table())
    if args.json:
        payload = {
            **asdict(result),
            "vs_ceiling": result.vs_ceiling,
            "vs_per_message": result.vs_per_message,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    results.publish(args, figures(result, results.command_line("bench.bench_stream", argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
