"""The streaming benchmark's results: the table it prints and the figures it records.

``BenchResult`` holds one run of ``bench.bench_stream`` (throughput of the three designs, the
latency at a paced rate, the broker's cost as a partition fills); ``figures`` turns it into the
rows of bench/results.json and README.md's table (``bench.results``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import results

TARGET_VS_CEILING = 0.5
TARGET_VS_PER_MESSAGE = 20.0
TARGET_P99_MS = 50.0


@dataclass
class BenchResult:
    transactions: int
    per_message_transactions: int
    raw_pipe_tps: float
    raw_pipe_runs: list[float]
    per_message_tps: float
    per_message_runs: list[float]
    consumer_tps: float
    consumer_runs: list[float]
    latency_rate: float
    latency_transactions: int
    # Labels published among the measured transactions of the short runs (due at their time).
    latency_labels: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    raw_latency_p50_ms: float
    raw_latency_p99_ms: float
    latency_runs: int
    latency_run_seconds: float
    latency_run_p99_ms: list[float]
    raw_latency_run_p99_ms: list[float]
    long_run_seconds: float
    long_latency_p50_ms: float
    long_latency_p99_ms: float
    long_raw_latency_p99_ms: float
    long_latency_window_p99_ms: list[float]
    long_raw_latency_window_p99_ms: list[float]
    broker_cost: dict[str, float]
    latency_steal_pct: float | None
    long_steal_pct: float | None
    batch_size: int
    snapshot_interval_s: float

    @property
    def vs_ceiling(self) -> float:
        return self.consumer_tps / self.raw_pipe_tps

    @property
    def vs_per_message(self) -> float:
        return self.consumer_tps / self.per_message_tps

    def table(self) -> str:
        def mark(ok: bool) -> str:
            return "ok" if ok else "MISSED"

        def steal(pct: float | None) -> str:
            return "" if pct is None else f"; CPU steal {pct:.1f} %"

        rows = [
            (
                "(1) raw kafka-python pipe (ceiling)",
                f"{self.raw_pipe_tps:,.0f}",
                "mean of " + " and ".join(f"{x:,.0f}" for x in self.raw_pipe_runs),
            ),
            (
                "(2) per-message REST design",
                f"{self.per_message_tps:,.0f}",
                "mean of " + " and ".join(f"{x:,.0f}" for x in self.per_message_runs),
            ),
            (
                "(3) scoring consumer",
                f"{self.consumer_tps:,.0f}",
                "mean of " + " and ".join(f"{x:,.0f}" for x in self.consumer_runs),
            ),
            (
                "(3)/(1)",
                f"{self.vs_ceiling:.2f}",
                f"target >= {TARGET_VS_CEILING}: {mark(self.vs_ceiling >= TARGET_VS_CEILING)}",
            ),
            (
                "(3)/(2)",
                f"{self.vs_per_message:.1f}",
                f"target >= {TARGET_VS_PER_MESSAGE:.0f}: "
                f"{mark(self.vs_per_message >= TARGET_VS_PER_MESSAGE)}",
            ),
            (
                f"(3) p99 end-to-end at {self.latency_rate:.0f} tx/s offered",
                f"{self.latency_p99_ms:.1f} ms",
                f"target <= {TARGET_P99_MS:.0f} ms: {mark(self.latency_p99_ms <= TARGET_P99_MS)}"
                f" (p50 {self.latency_p50_ms:.1f} ms, max {self.latency_max_ms:.1f} ms; "
                f"{self.latency_runs} runs of {self.latency_run_seconds:g} s on fresh topics, "
                f"{self.latency_labels:,} labels falling due among them: "
                + ", ".join(f"{x:.1f}" for x in self.latency_run_p99_ms)
                + steal(self.latency_steal_pct)
                + ")",
            ),
            (
                f"(1) p99 end-to-end at {self.latency_rate:.0f} tx/s offered",
                f"{self.raw_latency_p99_ms:.1f} ms",
                f"the same broker and client doing no work (p50 {self.raw_latency_p50_ms:.1f} ms; "
                + ", ".join(f"{x:.1f}" for x in self.raw_latency_run_p99_ms)
                + ")",
            ),
            (
                f"(3) p99 over one {self.long_run_seconds:g} s run",
                f"{self.long_latency_p99_ms:.1f} ms",
                f"p50 {self.long_latency_p50_ms:.1f} ms; p99 of each {self.latency_run_seconds:g} s: "
                + ", ".join(f"{x:.1f}" for x in self.long_latency_window_p99_ms)
                + steal(self.long_steal_pct),
            ),
            (
                f"(1) p99 over one {self.long_run_seconds:g} s run",
                f"{self.long_raw_latency_p99_ms:.1f} ms",
                f"p99 of each {self.latency_run_seconds:g} s: "
                + ", ".join(f"{x:.1f}" for x in self.long_raw_latency_window_p99_ms)
                + ". The broker slows as partitions fill:",
            ),
            (
                "broker ListOffsets, empty -> full partition",
                f"{self.broker_cost['list_offsets_full_ms']:.1f} ms",
                f"from {self.broker_cost['list_offsets_empty_ms']:.1f} ms at 50 stored batches "
                f"to {self.broker_cost['fill_batches'] + 50:,.0f}",
            ),
            (
                "broker fetch, empty -> full partition",
                f"{self.broker_cost['fetch_full_ms']:.1f} ms",
                f"from {self.broker_cost['fetch_empty_ms']:.1f} ms (Kafka's offset index keeps "
                "both flat)",
            ),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':{width}}  {'tx/s':>10}", "-" * (width + 40)]
        lines += [f"{name:{width}}  {value:>10}  {note}".rstrip() for name, value, note in rows]
        lines.append(
            f"({self.transactions:,} transactions for (1) and (3), "
            f"{self.per_message_transactions:,} for (2); batch size {self.batch_size}; "
            f"snapshot every {'commit' if not self.snapshot_interval_s else f'{self.snapshot_interval_s:g} s'})"
        )
        return "\n".join(lines)


def figures(r: BenchResult, command: str) -> list[results.Figure]:
    """The recorded figures of one run."""
    rate = f"{r.latency_rate:.0f} tx/s"
    runs = ", ".join(f"{x:.1f}" for x in r.latency_run_p99_ms)
    return [
        results.measured(
            "stream.vs_ceiling",
            "stream consumer / raw kafka-python pipe",
            r.vs_ceiling,
            "",
            "tx/s of the scoring consumer ÷ tx/s of a kafka-python pipe that consumes and "
            "produces the same JSON without features or scoring (means of two runs each)",
            command,
            results.Target(">=", TARGET_VS_CEILING),
            f"{r.consumer_tps:,.0f} / {r.raw_pipe_tps:,.0f} tx/s",
        ),
        results.measured(
            "stream.vs_per_message",
            "stream consumer / one REST call per transaction",
            r.vs_per_message,
            "x",
            "tx/s of the scoring consumer ÷ tx/s of the same loop making one :predict call per "
            "transaction (means of two runs each)",
            command,
            results.Target(">=", TARGET_VS_PER_MESSAGE),
            f"{r.consumer_tps:,.0f} / {r.per_message_tps:,.0f} tx/s",
        ),
        results.measured(
            "stream.p99_ms",
            f"p99 end-to-end latency at {rate}, labels of the week before falling due",
            r.latency_p99_ms,
            "ms",
            "transaction's Kafka timestamp to its decision produced, over short runs each on "
            "fresh topics of the embedded broker, the consumer as its own process",
            command,
            results.Target("<=", TARGET_P99_MS),
            f"p50 {r.latency_p50_ms:.1f} ms; {r.latency_runs} runs of "
            f"{r.latency_run_seconds:g} s: {runs}",
        ),
        results.measured(
            "stream.relay_p99_ms",
            f"p99 of the raw pipe relaying the same stream at {rate} (the broker's floor)",
            r.raw_latency_p99_ms,
            "ms",
            "the same latency for a relay that does no work: what the broker and client cost",
            command,
            detail=f"p50 {r.raw_latency_p50_ms:.1f} ms",
        ),
        results.measured(
            "stream.long_run_p99_ms",
            f"p99 end-to-end over one {r.long_run_seconds:g} s run at {rate}",
            r.long_latency_p99_ms,
            "ms",
            "the p99 latency over one long run on the same topics: the embedded broker's cost "
            "per request grows as its partitions fill (docs/streaming.md, Benchmark)",
            command,
            detail=f"p50 {r.long_latency_p50_ms:.1f} ms",
        ),
    ]
