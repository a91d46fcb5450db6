"""The benchmark results file (bench/results.json) and the README table rendered from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bench import all as bench_all
from bench import (
    bench_accuracy,
    bench_data,
    bench_pipeline,
    bench_serving,
    bench_shadow,
    bench_stream,
    results,
)
from core import statefile
from core.metadata import MODEL_FAMILIES
from core.simulator import SimulationConfig

README_WITH_MARKERS = f"# title\n\nbefore\n\n{results.START}\nstale\n{results.END}\n\nafter\n"


def fig(name: str, value: float = 1.0, target: results.Target | None = None) -> results.Figure:
    return results.measured(name, f"label of {name}", value, "s", "what it is", "cmd", target)


def test_readme_table_is_the_one_the_results_file_renders() -> None:
    table = results.table_in(results.README.read_text())
    assert table == results.render(results.load(results.RESULTS)), (
        "README.md's benchmark table differs from bench/results.json: run python -m bench.results"
    )


def test_check_command_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    assert results.main(["--check"]) == 0, capsys.readouterr().out


def _dummy_stream_result() -> bench_stream.BenchResult:
    values = {
        "float": 2.0,
        "int": 3,
        "list[float]": [1.0, 2.0],
        "float | None": None,
        "dict[str, float]": {
            "list_offsets_empty_ms": 1.0,
            "list_offsets_full_ms": 2.0,
            "fetch_empty_ms": 1.0,
            "fetch_full_ms": 2.0,
            "fill_batches": 8000.0,
        },
    }
    fields = dataclasses.fields(bench_stream.BenchResult)
    return bench_stream.BenchResult(**{f.name: values[str(f.type)] for f in fields})


def _names_each_bench_records() -> dict[str, set[str]]:
    """What each bench's ``figures`` produces for one run (values do not matter here)."""
    data = [bench_data.Result(n, "work", 1.0, 60.0, "1 tx/s", 1.0) for n in "abc"]
    paths = (
        "in-process, numpy",
        "REST, numpy columns",
        "REST, list of dicts",
        "gRPC, numpy columns",
    )
    report = {
        "throughput": [{"path": p, "batch": 256, "rows_per_s": 1.0} for p in paths],
        "ratios_at_batch_256": {
            "rest_columns_vs_inprocess_numpy": 0.6,
            "rest_rows_vs_inprocess_numpy": 0.5,
            "grpc_columns_vs_inprocess_numpy": 0.7,
        },
    }
    metrics = {
        "auc_roc": 0.9,
        "average_precision": 0.7,
        "card_precision_at_100": 0.3,
        "recall_at_1pct_fpr": 0.8,
    }
    steps = dict.fromkeys(bench_pipeline.STEPS, 1.0)
    stats = dict.fromkeys(bench_accuracy.SCORED, (0.5, 0.1))
    families = {f: f"platform ({f})" for f in MODEL_FAMILIES}
    accuracy_rows = dict.fromkeys(
        (*families.values(), "logistic regression", "random forest", bench_accuracy.CEILING),
        stats,
    )
    budgets = {"review": 0.01, "block": 0.002}
    alerts = dict.fromkeys(families, budgets)
    handbook_data = {"transactions": 1.0, "fraud_rate": 0.01, "share_amount_over_220": 0.1}
    produced = {
        "python -m bench.bench_data": bench_data.figures(data, SimulationConfig(), 10, "cmd"),
        "python -m bench.bench_serving": bench_serving.figures(
            dict.fromkeys(MODEL_FAMILIES, report), "cmd"
        ),
        "python -m bench.bench_stream": bench_stream.figures(_dummy_stream_result(), "cmd"),
        "python -m bench.bench_pipeline": bench_pipeline.figures(
            10.0, steps, metrics, metrics, "label", "cmd"
        ),
        "python -m bench.bench_accuracy": bench_accuracy.figures(
            accuracy_rows, families, alerts, budgets, handbook_data, 1.0, "cmd"
        ),
        "python -m bench.all": [bench_all.figure([("data", 0, 1.0)], "cmd")],
        "python -m bench.bench_shadow": bench_shadow.figures(
            {m: {"tx_per_s": 1.0, "p99_ms": 1.0} for m in bench_shadow.MODES},
            argparse.Namespace(transactions=1, latency_rate=1.0, latency_seconds=1.0),
            "cmd",
        ),
    }
    return {cmd: {f.name for f in figs} for cmd, figs in produced.items()}


def test_every_bench_row_is_one_its_bench_rewrites() -> None:
    """A row whose command is a bench must carry a name that bench records, or no run of it
    would ever replace the row."""
    produced = _names_each_bench_records()
    for figure in results.load(results.RESULTS):
        if figure.command.startswith("python -m bench."):
            bench = figure.command.split()[2]
            assert figure.name in produced[f"python -m {bench}"], (figure.name, bench)


def test_record_replaces_in_place_and_appends_new_names(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results.record([fig("a.x"), fig("b.x")], path, readme=None)
    results.record([fig("b.x", 5.0), fig("c.x")], path, readme=None)
    loaded = results.load(path)
    assert [f.name for f in loaded] == ["a.x", "b.x", "c.x"]
    assert loaded[1].value == 5.0
    assert loaded[0].machine == results.this_machine()


def _record_one(args: tuple[str, int]) -> None:
    path, i = args
    results.record([fig(f"p.{i}", float(i))], Path(path), readme=None)


def test_concurrent_records_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(_record_one, [(str(path), i) for i in range(24)]))
    assert sorted(f.value for f in results.load(path)) == [float(i) for i in range(24)]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_record_rewrites_only_the_readme_section(tmp_path: Path) -> None:
    path, readme = tmp_path / "results.json", tmp_path / "README.md"
    readme.write_text(README_WITH_MARKERS)
    results.record([fig("a.x", 40.0, results.Target("<=", 30.0))], path, readme)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n" + results.START + "\n")
    assert text.endswith(results.END + "\n\nafter\n")
    assert "stale" not in text
    assert results.table_in(text) == results.render(results.load(path))
    assert "≤ 30 s: **missed**" in text


def test_a_readme_without_its_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{results.START}\nno end\n")
    with pytest.raises(results.ResultsError, match="README.md: needs exactly one"):
        results.record([fig("a.x")], tmp_path / "results.json", readme)


def _document(*figures: dict) -> str:
    return json.dumps({"format": results.FORMAT, "version": results.VERSION, "figures": figures})


def _good() -> dict:
    return dataclasses.asdict(fig("a.x"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"format": "other", "version": 1}), "format 'other'"),
        (_document({k: v for k, v in _good().items() if k != "value"}), "figure 0 ('a.x')"),
        (_document({**_good(), "value": "fast"}), "value must be a number"),
        (_document({**_good(), "target": {"op": "=<", "threshold": 1}}), "operator '=<'"),
        (_document({**_good(), "date": "yesterday"}), "figure 0 ('a.x')"),
        (_document(_good(), _good()), "listed twice: a.x"),
    ],
)
def test_a_bad_results_file_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises((results.ResultsError, statefile.StateFileError)) as err:
        results.load(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_no_record_writes_nothing(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    results.add_arguments(parser)
    path = tmp_path / "results.json"
    results.publish(parser.parse_args(["--results", str(path), "--no-record"]), [fig("a.x")])
    assert not path.exists()
    results.publish(parser.parse_args(["--results", str(path)]), [fig("a.x")])
    assert [f.name for f in results.load(path)] == ["a.x"]


def test_this_machine_reads_cores_ram_and_cpu() -> None:
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    machine = results.this_machine()
    assert machine.cores == os.cpu_count()
    assert machine.ram_gib is not None and machine.ram_gib > 0
    assert machine.cpu == (models[0] if models else None)
    assert f"{machine.ram_gib:g} GiB RAM" in machine.describe()


def test_recorded_commands_carry_no_working_paths() -> None:
    """The README's commands are what a reader runs again: no machine's work or output paths."""
    assert results.command_line("bench.x", ["--workdir", "/w", "--set", "a=1", "--keep"]) == (
        "python -m bench.x --set a=1"
    )
    assert results.command_line("bench.x", ["--results=r.json", "--families", "gbt"]) == (
        "python -m bench.x --families gbt"
    )
    for figure in results.load(results.RESULTS):
        assert not any(opt in figure.command for opt in results.WHERE_OPTIONS), figure.command
