"""Grafana dashboards rendered without Grafana: each panel's PromQL, asked of a real Prometheus
over a time range, plotted where the dashboard places the panel, one PNG per dashboard.

``python -m monitoring.dashboard_render --prometheus http://localhost:9090 --since 30m
--out docs/img k8s/grafana/*.json`` renders the dashboards against a running stack (compose's
Prometheus, or the one ``tests/test_monitoring_prometheus.py`` starts, which writes
``docs/img`` with ``make dashboards``).

Panels keep their grid position, title, unit and legend format; time series are lines, a
``stat`` shows its last value, a ``bargauge`` bars of each series' last value, a ``heatmap``
the per-bucket counts of its cumulative buckets. Dashboard variables take their current value
and ``$__rate_interval`` the ``rate_interval`` given.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRID_COLUMNS = 24  # Grafana's grid width
UNIT_SCALE = {"percentunit": (100.0, "%"), "s": (1.0, "s"), "reqps": (1.0, "/s")}


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana's panel type
    grid: dict[str, int]  # gridPos: x, y, w, h
    unit: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend format)


@dataclass(frozen=True)
class Series:
    name: str
    times: list[float]  # epoch seconds
    values: list[float]


def panels(dashboard: dict[str, Any], rate_interval: str) -> list[Panel]:
    """The dashboard's data panels (rows left out), with variables at their current values."""
    variables = {
        v["name"]: v["current"]["value"]
        for v in dashboard.get("templating", {}).get("list", [])
        if v["type"] == "custom"
    }
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        targets = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            targets.append((expr, target.get("legendFormat", "")))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        out.append(Panel(panel["title"], panel["type"], panel["gridPos"], unit, tuple(targets)))
    return out


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label value.

    >>> legend("{{decision}} rate", {"decision": "block"})
    'block rate'
    """
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(
    url: str, expr: str, start: float, end: float, step: float, legend_format: str = ""
) -> list[Series]:
    """``expr`` over [start, end] from the Prometheus at ``url``; RuntimeError with its answer."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=60) as r:
            body = json.load(r)
    except OSError as err:
        raise RuntimeError(f"Prometheus at {url} did not answer {expr!r}: {err}") from err
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
    return [
        Series(
            legend(legend_format, s["metric"]),
            [float(t) for t, _ in s["values"]],
            [float(v) for _, v in s["values"]],
        )
        for s in body["data"]["result"]
    ]


def _finite_last(series: Series) -> float:
    finite = [v for v in series.values if math.isfinite(v)]
    return finite[-1] if finite else math.nan


def _draw(ax: Any, panel: Panel, data: list[Series]) -> None:
    scale, suffix = UNIT_SCALE.get(panel.unit, (1.0, ""))
    ax.set_title(panel.title, fontsize=9)
    ax.tick_params(labelsize=7)
    if not data:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    if panel.kind == "stat":
        ax.axis("off")
        text = "\n".join(f"{s.name}: {_finite_last(s) * scale:g}{suffix}" for s in data)
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    elif panel.kind == "bargauge":
        names = [s.name for s in data]
        ax.barh(names, [_finite_last(s) * scale for s in data])
        ax.invert_yaxis()
        ax.set_xlabel(suffix or panel.unit, fontsize=7)
    elif panel.kind == "heatmap":
        _heatmap(ax, data)
    else:
        from datetime import UTC, datetime

        for s in data:
            when = [datetime.fromtimestamp(t, UTC) for t in s.times]
            ax.plot(when, [v * scale for v in s.values], lw=1, label=s.name)
        ax.set_ylabel(suffix or panel.unit, fontsize=7)
        ax.legend(fontsize=5 if len(data) > 6 else 6, loc="upper left", ncol=1 + len(data) // 7)
        ax.xaxis.set_major_formatter(_time_format())


def _time_format() -> Any:
    from datetime import UTC

    import matplotlib.dates as mdates

    return mdates.DateFormatter("%H:%M:%S", tz=UTC)


def _heatmap(ax: Any, data: list[Series]) -> None:
    """Cumulative ``le`` buckets (legend ``{{le}}``) as counts per bucket over time."""
    import numpy as np

    def bound(s: Series) -> float:
        return math.inf if s.name == "+Inf" else float(s.name)

    ordered = sorted(data, key=bound)
    length = min(len(s.values) for s in ordered)
    cumulative = np.array([s.values[-length:] for s in ordered])
    counts = np.diff(cumulative, axis=0, prepend=0.0)
    ax.imshow(np.nan_to_num(counts), aspect="auto", origin="lower", cmap="viridis")
    ax.set_yticks(range(len(ordered)), [s.name for s in ordered], fontsize=6)
    ax.set_xlabel("time (scrape steps)", fontsize=7)


def render(
    dashboard_path: Path,
    prometheus_url: str,
    out_png: Path,
    start: float,
    end: float,
    step: float = 5.0,
    rate_interval: str = "1m",
) -> dict[str, int]:
    """Render one dashboard to ``out_png``; returns the number of series of each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(Path(dashboard_path).read_text())
    found = panels(dashboard, rate_interval)
    bottom = max(p.grid["y"] + p.grid["h"] for p in found)
    fig = plt.figure(figsize=(18, bottom * 0.45))
    grid = fig.add_gridspec(
        bottom, GRID_COLUMNS, hspace=2.5, wspace=1.5, top=1 - 0.6 / bottom, bottom=0.02
    )
    counts = {}
    for panel in found:
        g = panel.grid
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        data = [
            series
            for expr, fmt in panel.targets
            for series in query_range(prometheus_url, expr, start, end, step, fmt)
        ]
        _draw(ax, panel, data)
        counts[panel.title] = len(data)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(
        f"{dashboard['title']} ({prometheus_url}, until {stamp})", fontsize=12, y=1 - 0.1 / bottom
    )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return counts


def png_name(dashboard_path: Path) -> str:
    return Path(dashboard_path).stem + ".png"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitoring.dashboard_render", description=__doc__)
    p.add_argument("dashboards", nargs="+", type=Path, help="Grafana dashboard JSON files")
    p.add_argument("--prometheus", default="http://localhost:9090", help="Prometheus base URL")
    p.add_argument("--since", default="30m", help="time range ending now: 90s, 30m, 6h, 2d")
    p.add_argument("--step", type=float, default=5.0, help="seconds between points")
    p.add_argument("--rate-interval", default="1m", help="$__rate_interval's value")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="where the PNGs go")
    args = p.parse_args(argv)
    match = re.fullmatch(r"(\d+)([smhd])", args.since)
    if not match:
        p.error(f"--since: expected a number and s, m, h or d, got {args.since!r}")
    span = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    end = time.time()
    for path in args.dashboards:
        out = args.out / png_name(path)
        counts = render(path, args.prometheus, out, end - span, end, args.step, args.rate_interval)
        empty = [title for title, n in counts.items() if n == 0]
        print(f"{out}: {len(counts)} panels" + (f", without data: {empty}" if empty else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
