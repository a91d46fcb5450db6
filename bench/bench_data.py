"""Benchmarks of the data foundation: simulator, batch feature engine, streaming feature engine.

    python -m bench.bench_data [--customers 5000] [--days 180] [--stream-sample 200000]

Targets (on 2 cores): simulating 5,000 customers x 180 days in < 60 s, batch features on its
~1.8 M transactions in <= 30 s. The streaming engine's throughput is reported (transactions per
second, labels interleaved as in production); it has no fixed target. The figures are recorded in
bench/results.json and README.md's table (``bench.results``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import results
from core import contract as c
from core.features.batch import compute_features, epoch_seconds
from core.features.stream import StreamingFeatureEngine
from core.simulator import SimulationConfig, simulate


@dataclass
class Result:
    name: str
    work: str
    seconds: float
    target_seconds: float | None = None
    rate: str = ""
    tx_per_s: float = 0.0

    @property
    def ratio(self) -> float | None:
        """Measured / target: below 1 meets the target."""
        return None if self.target_seconds is None else self.seconds / self.target_seconds


def bench_simulate(cfg: SimulationConfig) -> tuple[pd.DataFrame, Result]:
    t = time.perf_counter()
    df = simulate(cfg)
    secs = time.perf_counter() - t
    work = f"{cfg.n_customers:,} customers x {cfg.n_days} days -> {len(df):,} tx"
    tps = len(df) / secs
    return df, Result("simulate", work, secs, 60.0, f"{tps:,.0f} tx/s", tps)


def bench_batch(df: pd.DataFrame, delay: int) -> Result:
    t = time.perf_counter()
    feats = compute_features(df, delay)
    secs = time.perf_counter() - t
    assert len(feats) == len(df)
    work = f"{len(df):,} tx x {len(c.STATEFUL_FEATURES)} features"
    tps = len(df) / secs
    return Result("batch features", work, secs, 30.0, f"{tps:,.0f} tx/s", tps)


def bench_stream(df: pd.DataFrame, delay: int, sample: int) -> Result:
    """The first ``sample`` transactions in stream order, each label fed when it is available."""
    df = df.iloc[:sample]
    ts = epoch_seconds(df[c.TIMESTAMP])
    available = ts + delay * c.SECONDS_PER_DAY
    # Labels before transactions at the same time; transactions in stream order (df is sorted).
    times = np.concatenate([available, ts])
    kinds = np.concatenate([np.zeros(len(df), np.int8), np.ones(len(df), np.int8)])
    rows = np.concatenate([np.arange(len(df)), np.arange(len(df))])
    order = np.lexsort((rows, kinds, times))
    keep = times[order] <= ts[-1]  # labels that arrive after the sample ends are never needed
    events = list(zip(kinds[order][keep].tolist(), rows[order][keep].tolist(), strict=True))
    cust, term = df[c.CUSTOMER_ID].tolist(), df[c.TERMINAL_ID].tolist()
    amount, label, tsl = df[c.AMOUNT].tolist(), df[c.LABEL].tolist(), ts.tolist()

    engine = StreamingFeatureEngine(delay)
    t = time.perf_counter()
    for kind, i in events:
        if kind:
            engine.update(cust[i], term[i], tsl[i], amount[i])
        else:
            engine.add_label(term[i], tsl[i], label[i])
    secs = time.perf_counter() - t
    n_labels = len(events) - len(df)
    work = f"{len(df):,} tx + {n_labels:,} labels"
    rate = f"{len(df) / secs:,.0f} tx/s ({1e6 * secs / len(df):.1f} us/tx)"
    return Result("stream features", work, secs, None, rate, len(df) / secs)


def format_table(results: list[Result]) -> str:
    header = f"{'benchmark':<16} {'work':<46} {'seconds':>8} {'target':>7} {'ratio':>6}  rate"
    lines = [header, "-" * len(header)]
    for r in results:
        target = f"{r.target_seconds:.0f}" if r.target_seconds is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        ok = "" if r.ratio is None else ("  ok" if r.ratio <= 1 else "  SLOW")
        lines.append(
            f"{r.name:<16} {r.work:<46} {r.seconds:>8.2f} {target:>7} {ratio:>6}  {r.rate}{ok}"
        )
    return "\n".join(lines)


def figures(
    measured: list[Result], cfg: SimulationConfig, n_tx: int, command: str
) -> list[results.Figure]:
    """The recorded figures of one run: ``measured`` as ``main`` measures it, in its order."""
    sim, batch, stream = measured
    return [
        results.measured(
            "data.simulate_seconds",
            f"simulate {cfg.n_customers:,} customers × {cfg.n_days} days ({n_tx / 1e6:.2f} M tx)",
            sim.seconds,
            "s",
            "wall seconds of core.simulator.simulate",
            command,
            results.Target("<=", sim.target_seconds),
            sim.rate,
        ),
        results.measured(
            "data.batch_features_seconds",
            f"batch features, {n_tx / 1e6:.2f} M tx",
            batch.seconds,
            "s",
            "wall seconds of core.features.batch.compute_features over the simulated frame",
            command,
            results.Target("<=", batch.target_seconds),
            batch.rate,
        ),
        results.measured(
            "data.stream_features_tps",
            f"streaming feature engine, {stream.work}",
            stream.tx_per_s,
            "tx/s",
            "transactions per second of StreamingFeatureEngine.update, labels interleaved",
            command,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stream-sample", type=int, default=200_000)
    results.add_arguments(parser)
    args = parser.parse_args(argv)

    cfg = SimulationConfig(
        n_customers=args.customers, n_terminals=args.terminals, n_days=args.days, seed=args.seed
    )
    delay = cfg.label_delay_days
    df, sim = bench_simulate(cfg)
    measured = [sim, bench_batch(df, delay), bench_stream(df, delay, args.stream_sample)]
    print(
        f"data benchmarks on {os.cpu_count()} CPU(s), fraud rate {100 * df[c.LABEL].mean():.2f} %"
    )
    print(format_table(measured))
    command = results.command_line("bench.bench_data", argv)
    results.publish(args, figures(measured, cfg, len(df), command))
    return 0 if all(r.ratio is None or r.ratio <= 1 for r in measured) else 1


if __name__ == "__main__":
    raise SystemExit(main())
