"""Benchmark: in-process SavedModel calls vs the embedded server's REST and gRPC paths, per family.

    python -m bench.bench_serving [--families mlp,gbt] [--seconds 1.5] [--json out.json]
    python -m bench.bench_serving --model-dir DIR      # one given model; records nothing

By default it trains every model family's model through the real pipeline (in process, on a
small simulation, with the gate open: this measures serving speed, not accuracy) and benches the
version the pipeline pushed: the TFT layer, the contract's raw inputs, the family's own model.
DIR may be a model base path (version sub-directories, the highest is used) or one version
directory.

Measured per model, on loopback, with the server in a subprocess (as deployed; it shares the
machine's cores with this process):

* rows/s at batch 1, 32, 256, 1024 for
  - in-process, tensors:   ``loaded.signatures["serving_default"](**tf_tensors)``, inputs
                           converted to tensors beforehand (the model call alone);
  - in-process, numpy:     the same call given numpy columns (conversion included);
  - REST, numpy columns:   ``ModelClient.predict(columns)``, one columnar ``:predict`` per batch;
  - REST, list of dicts:   ``ModelClient.predict(rows)``, the stream consumer's call;
  - gRPC, numpy columns / list of dicts: the same two calls of ``GrpcModelClient`` (one
                           ``PredictionService/Predict`` per batch, the consumer's
                           ``--serving-protocol grpc``);
* latency p50/p99 with 1, 8 and 32 concurrent clients (threads, each with its own keep-alive
  connection; bounded request counts);
* the REST / in-process ratio at batch 256, target >= 0.5 for each family, and the gRPC one beside
  it. Both sides start from the same numpy columns (REST: numpy columns; in-process: numpy), which
  is the like-for-like comparison and the one gated; the ratio against pre-converted tensors (the
  bare model call, no input handling at all) is printed too.

Per family, the gated ratio, that of the consumer's call (list of dicts) and the gRPC /
in-process ratio are recorded in bench/results.json and README.md's table (``bench.results``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import results

BATCH_SIZES = (1, 32, 256, 1024)
CONCURRENCY = (1, 8, 32)
CONCURRENCY_BATCHES = (1, 32)
RATIO_BATCH = 256
RATIO_TARGET = 0.5


@dataclass
class Throughput:
    path: str
    batch: int
    calls: int
    rows_per_s: float  # batch / median call time: robust to load spikes from other processes
    p50_ms: float
    rows_per_s_mean: float  # batch * calls / total time


@dataclass
class Latency:
    clients: int
    batch: int
    requests: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float
    errors: int


def _resolve_model(model_dir: Path, workdir: Path) -> tuple[Path, Path]:
    """Returns (base path for the server, version dir for the in-process load)."""
    model_dir = model_dir.resolve()
    if (model_dir / "saved_model.pb").exists():
        base = workdir / "model"
        base.mkdir()
        (base / "1").symlink_to(model_dir, target_is_directory=True)
        return base, model_dir
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    if not versions:
        raise SystemExit(f"{model_dir}: neither a SavedModel nor a base path with versions")
    return model_dir, model_dir / str(versions[-1])


# Small enough to train both families in a few minutes on 2 cores; the exported models have the
# inputs and the TFT layer of any other run.
TRAINING_DATA = {"n_customers": 500, "n_terminals": 1000, "n_days": 80}


def family_models(work: Path, families: list[str]) -> dict[str, Path]:
    """Each family's pushed model base path, trained by the real pipeline (in process)."""
    import pandas as pd

    from core.dataio import write_transactions
    from core.simulator import SimulationConfig, simulate
    from pipelines.runners import run_steps

    cfg = SimulationConfig(**TRAINING_DATA)
    data = work / "transactions.parquet"
    write_transactions(simulate(cfg), data)
    start = pd.Timestamp(cfg.start_date)
    models = {}
    for family in families:
        print(f"training the {family} model through the pipeline ...", file=sys.stderr)
        base = work / family / "models" / "fraud"
        params = {
            "data_path": str(data),
            "train_start": start.date().isoformat(),
            "train_end": (start + pd.Timedelta(days=cfg.n_days)).date().isoformat(),
            "model_base_path": str(base),
            "model": family,
            "min_auc": 0.0,
            "min_average_precision": 0.0,
        }
        pushed = run_steps(params, work / family / "steps")
        if not pushed.get("pushed"):
            raise SystemExit(f"the pipeline did not push a {family} model: {pushed}")
        models[family] = base
    return models


def _random_columns(sig: Any, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible inputs for any signature of 1-D/2-D numeric and string inputs."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for name, spec in sig.structured_input_signature[1].items():
        inner = [d or 1 for d in spec.shape.as_list()[1:]]
        shape = (n, *inner)
        dtype = tf.as_dtype(spec.dtype)
        if dtype == tf.string:
            if "time" in name or "date" in name:
                stamps = [
                    f"2024-05-{rng.integers(1, 29):02d}T{rng.integers(0, 24):02d}:"
                    f"{rng.integers(0, 60):02d}:00Z"
                    for _ in range(int(np.prod(shape)))
                ]
            else:
                stamps = [f"id-{rng.integers(0, 10**6)}" for _ in range(int(np.prod(shape)))]
            cols[name] = np.asarray(stamps).reshape(shape)
        elif dtype.is_floating:
            scale = 500.0 if name == "amount" else 2.0
            cols[name] = (rng.random(shape) * scale).astype(dtype.as_numpy_dtype)
        elif dtype.is_integer:
            cols[name] = rng.integers(0, 10, shape).astype(dtype.as_numpy_dtype)
        elif dtype == tf.bool:
            cols[name] = rng.random(shape) > 0.5
        else:
            raise SystemExit(f"input {name}: dtype {dtype.name} not supported by this bench")
    return cols


def _measure_interleaved(
    cells: list[tuple[str, Callable[[], Any]]], seconds: float, rounds: int = 10
) -> dict[str, list[float]]:
    """Per-call wall times of each cell, about `seconds` each, run in alternating rounds.

    Interleaving exposes every path to the same background load (this machine is shared), so
    their ratio stays meaningful even when absolute numbers move.
    """
    for _, fn in cells:
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name, _ in cells}
    per_round = seconds / rounds
    for _ in range(rounds):
        for name, fn in cells:
            deadline = time.perf_counter() + per_round
            calls = 0
            while calls < 2 or time.perf_counter() < deadline:
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
                calls += 1
    return times


def _throughput(path: str, batch: int, times: list[float]) -> Throughput:
    median = statistics.median(times)
    return Throughput(
        path=path,
        batch=batch,
        calls=len(times),
        rows_per_s=batch / median,
        p50_ms=median * 1e3,
        rows_per_s_mean=batch * len(times) / sum(times),
    )


def _concurrent(
    url: str, model: str, cols: dict[str, np.ndarray], clients: int, batch: int, total: int
) -> Latency:
    """`clients` threads, each with its own ModelClient (own keep-alive connection).

    Threads rather than processes: on a 2-core machine, 32 client processes would mostly
    measure their own scheduling; threads keep the client side to about one core.
    """
    from serving.client import ModelClient

    per_client = max(1, total // clients)
    sliced = {k: v[:batch] for k, v in cols.items()}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker() -> None:
        client = ModelClient(url, model, timeout_s=30.0, output_key=None)
        client.predict(sliced)  # connect + resolve the version outside the measurement
        barrier.wait()
        mine = []
        for _ in range(per_client):
            started = time.perf_counter()
            try:
                client.predict(sliced)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    p99_index = min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))
    return Latency(
        clients=clients,
        batch=batch,
        requests=len(latencies),
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=latencies[p99_index] * 1e3,
        rows_per_s=batch * len(latencies) / wall,
        errors=errors[0],
    )


def run(base: Path, version_dir: Path, seconds: float, concurrency_requests: int) -> dict[str, Any]:
    import tensorflow as tf

    from core.model import register_custom_ops, saved_model_ops
    from serving._launch import ServerProcess
    from serving.client import ModelClient
    from serving.grpc_client import GrpcModelClient

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        server = ServerProcess(
            [
                "--model_name=bench",
                f"--model_base_path={base}",
                "--file_system_poll_wait_seconds=30",
            ],
            log_path=Path(tmp) / "server.log",
        )
        print("starting the model server ...", file=sys.stderr)
        with server:
            register_custom_ops(saved_model_ops(version_dir))
            loaded = tf.saved_model.load(str(version_dir))
            sig = loaded.signatures["serving_default"]
            cols = _random_columns(sig, max(BATCH_SIZES))
            client = ModelClient(server.url, "bench", timeout_s=30.0, output_key=None)
            client.wait_until_available(60)
            grpc_client = GrpcModelClient(
                server.grpc_target, "bench", timeout_s=30.0, output_key=None
            )

            # Same answers every way (catches input-order or conversion mistakes).
            probe = {k: v[:64] for k, v in cols.items()}
            local = next(iter(sig(**probe).values())).numpy().reshape(64, -1)[:, 0]
            for name, remote in (("REST", client), ("gRPC", grpc_client)):
                if not np.allclose(local, remote.predict(probe).scores, rtol=1e-5, atol=1e-6):
                    raise SystemExit(
                        f"{name} and in-process scores differ: the bench would be invalid"
                    )

            results: list[Throughput] = []
            for batch in BATCH_SIZES:
                arrays = {k: v[:batch] for k, v in cols.items()}
                tensors = {k: tf.constant(v) for k, v in arrays.items()}
                rows = [
                    {
                        k: (v[i].item() if v.dtype.kind != "U" else str(v[i]))
                        for k, v in arrays.items()
                    }
                    for i in range(batch)
                ]
                print(f"  batch {batch} ...", file=sys.stderr)
                cells: list[tuple[str, Callable[[], Any]]] = [
                    ("in-process, tensors", lambda t=tensors: sig(**t)),
                    ("in-process, numpy", lambda a=arrays: sig(**a)),
                    ("REST, numpy columns", lambda a=arrays: client.predict(a)),
                    ("REST, list of dicts", lambda r=rows: client.predict(r)),
                    ("gRPC, numpy columns", lambda a=arrays: grpc_client.predict(a)),
                    ("gRPC, list of dicts", lambda r=rows: grpc_client.predict(r)),
                ]
                for path, times in _measure_interleaved(cells, seconds).items():
                    results.append(_throughput(path, batch, times))

            latencies = []
            for batch in CONCURRENCY_BATCHES:
                for clients in CONCURRENCY:
                    print(f"  {clients} concurrent clients, batch {batch} ...", file=sys.stderr)
                    latencies.append(
                        _concurrent(server.url, "bench", cols, clients, batch, concurrency_requests)
                    )

    def rate(path: str, batch: int) -> float:
        return next(r.rows_per_s for r in results if r.path == path and r.batch == batch)

    ratios = {
        "rest_columns_vs_inprocess_tensors": rate("REST, numpy columns", RATIO_BATCH)
        / rate("in-process, tensors", RATIO_BATCH),
        "rest_columns_vs_inprocess_numpy": rate("REST, numpy columns", RATIO_BATCH)
        / rate("in-process, numpy", RATIO_BATCH),
        "rest_rows_vs_inprocess_numpy": rate("REST, list of dicts", RATIO_BATCH)
        / rate("in-process, numpy", RATIO_BATCH),
        "grpc_columns_vs_inprocess_numpy": rate("gRPC, numpy columns", RATIO_BATCH)
        / rate("in-process, numpy", RATIO_BATCH),
        "grpc_rows_vs_inprocess_numpy": rate("gRPC, list of dicts", RATIO_BATCH)
        / rate("in-process, numpy", RATIO_BATCH),
    }
    return {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "throughput": [asdict(r) for r in results],
        "latency": [asdict(r) for r in latencies],
        "ratios_at_batch_256": ratios,
        "target": RATIO_TARGET,
    }


def format_report(report: dict[str, Any]) -> str:
    throughput = [Throughput(**r) for r in report["throughput"]]
    paths = list(dict.fromkeys(r.path for r in throughput))
    machine = report["machine"]
    lines = [
        f"{machine['cpus']} CPUs, 1-min load average {machine['load_avg_1m_at_end']} at the end",
        "",
        "rows/s = batch / median call time (median call time in ms)",
        "",
    ]
    header = "| path | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |"
    lines += [header, "|" + "---|" * (len(BATCH_SIZES) + 1)]
    for path in paths:
        cells = []
        for batch in BATCH_SIZES:
            r = next(t for t in throughput if t.path == path and t.batch == batch)
            cells.append(f"{r.rows_per_s:,.0f} ({r.p50_ms:.2f} ms)")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "REST latency, N concurrent clients (ModelClient, columnar :predict)",
        "",
    ]
    lines += ["| clients | batch | requests | p50 ms | p99 ms | rows/s | errors |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in (Latency(**x) for x in report["latency"]):
        lines.append(
            f"| {r.clients} | {r.batch} | {r.requests} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.rows_per_s:,.0f} | {r.errors} |"
        )
    ratios = report["ratios_at_batch_256"]
    gated = ratios["rest_columns_vs_inprocess_numpy"]
    verdict = "PASS" if gated >= report["target"] else "FAIL"
    lines += [
        "",
        f"batch {RATIO_BATCH}: REST (numpy columns) / in-process (numpy)   = {gated:.2f} "
        f"(target >= {report['target']}: {verdict})",
        f"batch {RATIO_BATCH}: REST (numpy columns) / in-process (tensors) = "
        f"{ratios['rest_columns_vs_inprocess_tensors']:.2f} (bare model call baseline)",
        f"batch {RATIO_BATCH}: REST (list of dicts) / in-process (numpy)   = "
        f"{ratios['rest_rows_vs_inprocess_numpy']:.2f}",
        f"batch {RATIO_BATCH}: gRPC (numpy columns) / in-process (numpy)   = "
        f"{ratios['grpc_columns_vs_inprocess_numpy']:.2f}",
        f"batch {RATIO_BATCH}: gRPC (list of dicts) / in-process (numpy)   = "
        f"{ratios['grpc_rows_vs_inprocess_numpy']:.2f}",
    ]
    return "\n".join(lines)


def _rows_per_s(report: dict[str, Any], path: str, batch: int) -> float:
    return next(
        r["rows_per_s"] for r in report["throughput"] if r["path"] == path and r["batch"] == batch
    )


def figures(reports: dict[str, dict[str, Any]], command: str) -> list[results.Figure]:
    """The recorded figures of one ``run`` report per family: the REST / in-process ratios at
    batch 256, and the gRPC / in-process one."""
    meaning = (
        "rows/s of {} ÷ rows/s of the in-process signature call given the same numpy columns, "
        f"batch {RATIO_BATCH}, median call times, server in a subprocess, the {{}} model the "
        "pipeline pushed"
    )
    out = []
    for family, report in reports.items():
        ratios = report["ratios_at_batch_256"]
        inprocess = _rows_per_s(report, "in-process, numpy", RATIO_BATCH)

        def detail(path: str, report: dict[str, Any] = report, inprocess: float = inprocess) -> str:
            return f"{_rows_per_s(report, path, RATIO_BATCH):,.0f} / {inprocess:,.0f} rows/s"

        out += [
            results.measured(
                f"serving.rest_vs_inprocess.{family}",
                f"REST / in-process rows/s at batch {RATIO_BATCH}, {family} model",
                ratios["rest_columns_vs_inprocess_numpy"],
                "",
                meaning.format("ModelClient.predict given numpy columns", family),
                command,
                results.Target(">=", RATIO_TARGET),
                detail("REST, numpy columns"),
            ),
            results.measured(
                f"serving.rest_rows_vs_inprocess.{family}",
                f"REST with a list of row dicts (the consumer's call) / in-process at batch "
                f"{RATIO_BATCH}, {family} model",
                ratios["rest_rows_vs_inprocess_numpy"],
                "",
                meaning.format("ModelClient.predict given a list of row dicts", family),
                command,
                detail=detail("REST, list of dicts"),
            ),
            results.measured(
                f"serving.grpc_vs_inprocess.{family}",
                f"gRPC / in-process rows/s at batch {RATIO_BATCH}, {family} model",
                ratios["grpc_columns_vs_inprocess_numpy"],
                "",
                meaning.format(
                    "GrpcModelClient.predict (PredictionService/Predict) given numpy columns",
                    family,
                ),
                command,
                detail=detail("gRPC, numpy columns"),
            ),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    from core.metadata import MODEL_FAMILIES

    parser = argparse.ArgumentParser(prog="python -m bench.bench_serving", description=__doc__)
    parser.add_argument(
        "--families",
        default=",".join(MODEL_FAMILIES),
        help="comma-separated model families to train and bench (default: every family)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="bench this model instead (base path or version dir); records nothing",
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="time per throughput cell")
    parser.add_argument(
        "--concurrency-requests",
        type=int,
        default=640,
        help="requests per concurrency cell (split across the clients)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the reports here")
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(MODEL_FAMILIES))
    if unknown or not families:
        parser.error(f"--families: unknown {unknown or 'empty list'}; known: {MODEL_FAMILIES}")
    random.seed(0)
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-models-") as tmp:
        work = Path(tmp)
        if args.model_dir is not None:
            models = {"given model": _resolve_model(args.model_dir, work)}
        else:
            models = {
                f: _resolve_model(base, work / f)
                for f, base in family_models(work, families).items()
            }
        for name, (base, version_dir) in models.items():
            print(f"benching the {name} ...", file=sys.stderr)
            reports[name] = run(base, version_dir, args.seconds, args.concurrency_requests)
    for name, report in reports.items():
        print(f"## {name}\n\n{format_report(report)}\n")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    if args.model_dir is None:
        results.publish(args, figures(reports, results.command_line("bench.bench_serving", argv)))
    else:
        print("not recorded: a given model is not a family's pipeline model")
    gated = [r["ratios_at_batch_256"]["rest_columns_vs_inprocess_numpy"] for r in reports.values()]
    return 0 if min(gated) >= RATIO_TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
