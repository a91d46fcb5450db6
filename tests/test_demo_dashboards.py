"""`make run`'s dashboards (app/demo_dashboards.py) without the whole run: a real Prometheus started
as the demo starts it, its configuration (the consumer's and the model server's scrape jobs, the
repo's alert rules), scraping a live consumer metrics endpoint and rendering every dashboard; and
the run without a ``prometheus`` binary, which says why nothing was rendered."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_fixtures import COMPOSE_PROMETHEUS, tool
from stream_fixtures import wait_for

from app import demo_dashboards as dd
from core import contract as c
from monitoring.prometheus_server import INSTALL_HINT, free_port
from streaming.metrics import StreamMetrics

pytestmark = pytest.mark.slow


class LiveConsumerMetrics:
    """The consumer's metrics endpoint, deciding a transaction every few milliseconds."""

    def __init__(self) -> None:
        self.metrics = StreamMetrics()
        self.port = free_port()
        self.http = self.metrics.serve(self.port)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._decide, daemon=True)
        self.thread.start()

    def _decide(self) -> None:
        while not self.stopped.wait(0.005):
            self.metrics.consumed.inc()
            self.metrics.decided.inc()
            self.metrics.decisions.labels(c.APPROVE).inc()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.http.shutdown()


@pytest.fixture
def monitoring(tmp_path: Path) -> Iterator[dd.RunMonitoring]:
    tool("prometheus")  # a clear failure naming the package when it is missing
    run = dd.start_monitoring(tmp_path / "prometheus")
    yield run
    run.stop()


def test_prometheus_is_configured_as_the_demo_needs(monitoring: dd.RunMonitoring) -> None:
    assert monitoring.reason is None and monitoring.server is not None
    config = yaml.safe_load(monitoring.server.config_path.read_text())
    jobs = {j["job_name"]: j["metrics_path"] for j in config["scrape_configs"]}
    compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    expected = {j["job_name"]: j.get("metrics_path", "/metrics") for j in compose["scrape_configs"]}
    # The demo's jobs are compose's, with the model server's path its monitoring config sets.
    assert jobs == {name: expected[name] for name in (dd.CONSUMER_JOB, dd.SERVING_JOB)}
    assert config["rule_files"] == [str(dd.ALERT_RULES)]
    assert config["global"]["scrape_interval"] == f"{dd.SCRAPE_INTERVAL_S}s"
    loaded = monitoring.server.api("rules")["groups"]
    committed = yaml.safe_load(dd.ALERT_RULES.read_text())["groups"]
    assert sorted(g["name"] for g in loaded) == sorted(g["name"] for g in committed)
    assert sum(len(g["rules"]) for g in loaded) == sum(len(g["rules"]) for g in committed) > 0


def test_watch_points_both_jobs_at_the_run_and_the_render_draws_its_data(
    monitoring: dd.RunMonitoring, tmp_path: Path
) -> None:
    consumer = LiveConsumerMetrics()
    serving = f"127.0.0.1:{free_port()}"  # nothing listens: that target is down
    try:
        monitoring.watch(f"127.0.0.1:{consumer.port}", serving)
        server = monitoring.server
        assert server is not None

        def discovered() -> list[dict]:
            found = server.api("targets", state="active")["activeTargets"]
            return found if len(found) == 2 else []

        found = wait_for(discovered, 60, "both targets discovered")
        targets = {t["labels"]["job"]: t["scrapeUrl"] for t in found}
        assert targets == {
            dd.CONSUMER_JOB: f"http://127.0.0.1:{consumer.port}/metrics",
            dd.SERVING_JOB: f"http://{serving}{dd.serving_metrics_path()}",
        }
        # Two scrapes of a growing counter: rates exist.
        wait_for(
            lambda: server.query("rate(fraud_stream_decided_total[30s]) > 0"),
            60,
            "the consumer's decisions rate",
        )
        monitoring.settle()
        summary = monitoring.render(tmp_path / "dashboards")
    finally:
        consumer.close()
    pngs = [Path(p) for p in summary["rendered"]]
    assert [p.name for p in pngs] == [f"{d.stem}.png" for d in dd.dashboards()]
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000, png
    empty = summary["empty_panels"]
    assert "Throughput" not in empty["fraud-dashboard"]
    assert "Decisions by type" not in empty["fraud-dashboard"]
    # Only the consumer's stream metrics exist here: the model server's panel is empty, and
    # the run's table names it.
    assert "TF Serving requests by status" in empty["fraud-dashboard"]
    line = dd.summary_line(summary)
    assert line.startswith(f"2 rendered in {tmp_path / 'dashboards'}")
    assert "TF Serving requests by status" in line

    # The run's Prometheus data stays: the same dashboards drawn again from it after the run.
    monitoring.stop()
    run_dir = monitoring.server.home.parent
    (run_dir / "summary.json").write_text(json.dumps({"dashboards": summary}))
    again = dd.rerender(run_dir, tmp_path / "again")
    assert (again["start"], again["end"]) == (summary["start"], summary["end"])
    assert again["empty_panels"] == empty
    assert [Path(p).parent for p in again["rendered"]] == [tmp_path / "again"] * len(pngs)


def test_without_prometheus_the_run_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus on it
    run = dd.start_monitoring(tmp_path / "prometheus")
    assert run.server is None
    run.watch("127.0.0.1:1", "127.0.0.1:2")
    run.settle()
    summary = run.render(tmp_path / "dashboards")
    assert summary["rendered"] == [] and not (tmp_path / "dashboards").exists()
    line = dd.summary_line(summary)
    assert line == "dashboards not rendered: prometheus is not on PATH: " + INSTALL_HINT
    assert "\n" not in line
