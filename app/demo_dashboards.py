"""`make run`'s Grafana dashboards: a real Prometheus scrapes the run's consumer and model server
with the repo's alert rules loaded, and every k8s/grafana/*.json is rendered over the run's time
range (monitoring/dashboard_render.py) into ``<run dir>/dashboards``.

Without a ``prometheus`` binary the run goes on and its summary says why nothing was rendered.

The run keeps Prometheus' data (``<run dir>/prometheus``): ``python -m app.demo_dashboards RUN_DIR
--out DIR`` draws the dashboards again from it, over the same range (``make dashboards`` writes
docs/img so from the newest run).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from monitoring import dashboard_render as dr
from monitoring.prometheus_server import PrometheusMissing, PrometheusServer

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO_ROOT / "k8s" / "grafana"
ALERT_RULES = REPO_ROOT / "k8s" / "prometheus" / "fraud-alerts.rules.yaml"
# The model server's exporter, on as in Kubernetes and docker-compose.
MONITORING_CONFIG = REPO_ROOT / "k8s" / "base" / "serving" / "monitoring.config"
CONSUMER_JOB, SERVING_JOB = "fraud-consumer", "fraud-serving"  # k8s/compose/prometheus.yml's
# Seconds: the consumer answers a scrape between batches, which may take a second or two on two
# shared cores, and a scrape may not outlast its interval.
SCRAPE_INTERVAL_S = 5
# Grafana's $__rate_interval for this scrape interval and step, widened so that one missed
# scrape leaves no gap in the rates.
RATE_INTERVAL = "30s"


def serving_metrics_path() -> str:
    """Where the model server exports, read from the monitoring config it is started with."""
    from serving.config import parse_monitoring_config

    text = MONITORING_CONFIG.read_text()
    return parse_monitoring_config(text, str(MONITORING_CONFIG)).prometheus_config.path


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


@dataclass
class RunMonitoring:
    """The run's Prometheus (None, with the reason, when it could not be started)."""

    server: PrometheusServer | None
    reason: str | None = None
    started_at: float = field(default_factory=time.time)

    def watch(self, consumer: str, serving: str) -> None:
        """Scrape the consumer's metrics and the model server's REST port (both host:port)."""
        if self.server is not None:
            self.server.scrape(CONSUMER_JOB, [consumer])
            self.server.scrape(SERVING_JOB, [serving])

    def settle(self) -> None:
        """Wait one scrape, so the stream's last counts are in Prometheus before its processes
        stop."""
        if self.server is not None:
            time.sleep(SCRAPE_INTERVAL_S + 1)

    def render(self, out_dir: Path, end: float | None = None) -> dict:
        """Every dashboard over [started_at, end] as ``out_dir/<name>.png``: the PNG paths and
        each dashboard's panels without data, or the reason nothing was rendered."""
        if self.server is None:
            return {"rendered": [], "reason": self.reason}
        end = time.time() if end is None else end
        return render_all(self.server.url, out_dir, self.started_at, end)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def render_all(url: str, out_dir: Path, start: float, end: float) -> dict:
    """Every dashboard from the Prometheus at ``url`` over [start, end] (epoch seconds)."""
    rendered, empty = [], {}
    for path in dashboards():
        png = out_dir / dr.png_name(path)
        counts = dr.render(
            path, url, png, start, end, step=SCRAPE_INTERVAL_S, rate_interval=RATE_INTERVAL
        )
        rendered.append(str(png))
        empty[path.stem] = [title for title, n in counts.items() if n == 0]
    return {"rendered": rendered, "empty_panels": empty, "reason": None, "start": start, "end": end}


def _server(home: Path, rules: bool = True) -> PrometheusServer:
    return PrometheusServer(
        home,
        {CONSUMER_JOB: "/metrics", SERVING_JOB: serving_metrics_path()},
        rule_files=[ALERT_RULES] if rules else [],
        scrape_interval=f"{SCRAPE_INTERVAL_S}s",
        evaluation_interval=f"{SCRAPE_INTERVAL_S}s",
    )


def rerender(run_dir: Path, out_dir: Path) -> dict:
    """A finished run's dashboards drawn again from its kept Prometheus data, over its range."""
    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path}: not a finished `make run` directory")
    rendered = json.loads(summary_path.read_text()).get("dashboards") or {}
    if "start" not in rendered:
        raise ValueError(
            f"{run_dir} has no dashboard range in its summary ({summary_line(rendered)})"
        )
    server = _server(Path(run_dir) / "prometheus", rules=False)
    for job in (CONSUMER_JOB, SERVING_JOB):  # the run's processes are gone: scrape nothing
        server.scrape(job, [])
    with server:
        return render_all(server.url, out_dir, rendered["start"], rendered["end"])


def start_monitoring(home: Path) -> RunMonitoring:
    """A Prometheus in ``home`` with the consumer and model-server jobs (no targets yet) and the
    repo's alert rules; without the binary, a RunMonitoring that says so."""
    try:
        server = _server(home)
    except PrometheusMissing as err:
        return RunMonitoring(None, f"dashboards not rendered: {err}")
    started_at = time.time()
    return RunMonitoring(server.start(), started_at=started_at)


def summary_line(dashboards_summary: dict) -> str:
    """One line for the run's table: where the PNGs are, or why there are none."""
    rendered = dashboards_summary.get("rendered") or []
    if not rendered:
        return dashboards_summary.get("reason") or "dashboards not rendered"
    empty = {k: v for k, v in dashboards_summary.get("empty_panels", {}).items() if v}
    where = str(Path(rendered[0]).parent)
    line = f"{len(rendered)} rendered in {where}"
    if empty:
        line += "; panels without data: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in empty.items()
        )
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.demo_dashboards", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a finished `make run` directory (runs/demo-...)")
    p.add_argument("--out", type=Path, default=None, help="where the PNGs go (RUN_DIR/dashboards)")
    args = p.parse_args(argv)
    summary = rerender(args.run_dir, args.out or args.run_dir / "dashboards")
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
