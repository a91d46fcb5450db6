"""Grafana dashboards rendered without Grafana: each panel's PromQL, asked of a real Prometheus
over a time range, plotted where the dashboard places the panel, one PNG per dashboard.

``python -m monitoring.dashboard_render --prometheus http://localhost:9090 --since 30m
--out docs/img k8s/grafana/*.json`` renders the dashboards against a running stack (compose's
Prometheus, or the one ``tests/test_monitoring_prometheus.py`` starts, which writes
``docs/img`` with ``make dashboards``).

Panels keep their grid position, title, unit and legend format, and rows their titles; time
series are lines, a ``stat`` shows its last value, a ``bargauge`` bars of each series' last
value, a ``heatmap`` the per-bucket counts of its cumulative buckets over time. A panel without
series shows its ``noValue`` text (Grafana's "No value" option) or "no data". Time series with
more than ``LEGEND_MAX`` series list the highest ones and draw the others in grey. Dashboard
variables take their current value and ``$__rate_interval`` the ``rate_interval`` given.
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
# Inches: a grid column, a grid row (Grafana's 30 px row + its 8 px gap, against ~75 px columns
# on a wide screen), and the room inside each panel's box for its title, tick labels and legend.
COLUMN_IN, ROW_IN = 0.75, 0.4
TITLE_IN, XTICKS_IN, YTICKS_IN, PAD_IN = 0.3, 0.3, 0.55, 0.12
BAR_LABELS_IN = 1.35
LEGEND_IN = 1.9  # a legend column right of a time series with many series
LEGEND_MAX = 8  # series named in a legend; the rest drawn grey
UNIT_SCALE = {
    "percentunit": (100.0, "%"),
    "s": (1.0, "s"),
    "reqps": (1.0, "/s"),
    "currencyUSD": (1.0, "USD"),
    "short": (1.0, ""),  # Grafana's plain number
    "none": (1.0, ""),
}


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana's panel type
    grid: dict[str, int]  # gridPos: x, y, w, h
    unit: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend format)
    no_value: str = ""  # fieldConfig.defaults.noValue: shown when no series answers
    right_axis: tuple[str, ...] = ()  # series an override places on the right axis, by name


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
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        targets = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            targets.append((expr, target.get("legendFormat", "")))
        out.append(
            Panel(
                panel["title"],
                panel["type"],
                panel["gridPos"],
                defaults.get("unit", ""),
                tuple(targets),
                defaults.get("noValue", ""),
                _right_axis(panel.get("fieldConfig", {}).get("overrides", [])),
            )
        )
    return out


def _right_axis(overrides: list[dict[str, Any]]) -> tuple[str, ...]:
    """Series names matched ``byName`` by an override setting ``custom.axisPlacement: right``."""
    return tuple(
        o["matcher"]["options"]
        for o in overrides
        if o.get("matcher", {}).get("id") == "byName"
        and {"id": "custom.axisPlacement", "value": "right"} in o.get("properties", [])
    )


def rows(dashboard: dict[str, Any]) -> list[tuple[str, int]]:
    """The dashboard's row headers: (title, grid y)."""
    return [(p["title"], p["gridPos"]["y"]) for p in dashboard["panels"] if p["type"] == "row"]


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


def _draw(ax: Any, panel: Panel, data: list[Series], span: tuple[float, float]) -> bool:
    """Draw ``data`` on ``ax``; True when its legend needs the panel's legend column."""
    scale, suffix = UNIT_SCALE.get(panel.unit, (1.0, ""))
    ax.set_title(panel.title, fontsize=9)
    ax.tick_params(labelsize=7)
    if not data:
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            panel.no_value or "no data",
            ha="center",
            va="center",
            wrap=True,
            fontsize=9,
            color="dimgrey",
            transform=ax.transAxes,
        )
        return False
    if panel.kind == "stat":
        ax.axis("off")
        text = "\n".join(f"{s.name}: {_finite_last(s) * scale:g}{suffix}" for s in data)
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    elif panel.kind == "bargauge":
        names = [s.name for s in data]
        ax.barh(names, [_finite_last(s) * scale for s in data])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel(suffix if panel.unit in UNIT_SCALE else panel.unit, fontsize=7)
        _compact_ticks(ax.xaxis)
    elif panel.kind == "heatmap":
        _heatmap(ax, data, span)
    else:
        return _lines(ax, panel, data, scale, suffix, span)
    return False


def _peak(series: Series) -> float:
    finite = [v for v in series.values if math.isfinite(v)]
    return max(finite) if finite else -math.inf


def _lines(
    ax: Any, panel: Panel, data: list[Series], scale: float, suffix: str, span: tuple[float, float]
) -> bool:
    """Lines over the whole range; beyond LEGEND_MAX series, the highest named, the rest grey;
    the series an override puts on the right axis there."""
    from datetime import UTC, datetime

    right = [s for s in data if s.name in panel.right_axis]
    data = [s for s in data if s.name not in panel.right_axis]
    ordered = sorted(data, key=_peak, reverse=True) if len(data) > LEGEND_MAX else data
    named, rest = ordered[:LEGEND_MAX], ordered[LEGEND_MAX:]
    for i, s in enumerate(rest):
        when = [datetime.fromtimestamp(t, UTC) for t in s.times]
        label = f"{len(rest)} more, lower" if i == 0 else None
        ax.plot(when, [v * scale for v in s.values], lw=0.6, color="lightgrey", label=label)
    for s in named:
        when = [datetime.fromtimestamp(t, UTC) for t in s.times]
        # A line of a few points is hard to see: mark them.
        marker = "." if len(s.values) <= 5 else None
        ax.plot(when, [v * scale for v in s.values], lw=1, marker=marker, label=s.name)
    ax.set_ylabel(suffix if panel.unit in UNIT_SCALE else panel.unit, fontsize=7)
    _compact_ticks(ax.yaxis)
    _time_axis(ax, span)
    handles, labels = ax.get_legend_handles_labels()
    if rest:  # the grey entry last, as the legend's footnote
        handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
    if right:
        twin = ax.twinx()
        twin.tick_params(labelsize=7)
        for s in right:
            when = [datetime.fromtimestamp(t, UTC) for t in s.times]
            twin.plot(when, [v * scale for v in s.values], lw=1, ls="--", color="k", label=s.name)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles += more_handles
        labels += [f"{name} (right)" for name in more_labels]
    # Beside the plot when many, unless the panel is too narrow to give up a legend column.
    outside = len(data) + len(right) > 3 and panel.grid["w"] >= 8
    if outside:  # beyond the right axis' tick labels when there is one
        anchor = (1.09 if right else 1.01, 1.0)
        ax.legend(
            handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=anchor, frameon=False
        )
    else:
        ax.legend(handles, labels, fontsize=6, loc="best", framealpha=0.7)
    return outside


def _compact_ticks(axis: Any) -> None:
    """Large values as 500k, 1.2M: long tick labels would run into the neighbouring panel."""
    from matplotlib.ticker import FuncFormatter

    def short(value: float, _pos: int) -> str:
        for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:g}{suffix}"
        return f"{value:g}"

    lo, hi = axis.get_view_interval()
    if max(abs(lo), abs(hi)) >= 10_000:
        axis.set_major_formatter(FuncFormatter(short))


TICK_STEPS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def _time_axis(ax: Any, span: tuple[float, float]) -> None:
    """The whole range, as every panel of a dashboard shares it; UTC clock ticks at round
    steps, as many as the panel's width holds, with seconds when the steps are shorter than a
    minute."""
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    from matplotlib.ticker import FixedLocator

    start, end = span
    ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    width_in = ax.get_position().width * ax.figure.get_size_inches()[0]
    most = max(2, min(8, int(width_in / 0.8)))  # an HH:MM label needs ~0.8 in at this size
    step = next((s for s in TICK_STEPS_S if (end - start) / s <= most), TICK_STEPS_S[-1])
    first = math.ceil(start / step) * step
    ticks = [datetime.fromtimestamp(t, UTC) for t in range(int(first), int(end) + 1, step)]
    ax.xaxis.set_major_locator(FixedLocator(mdates.date2num(ticks)))
    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M" if step >= 60 else "%H:%M:%S", tz=UTC)
    )


def _heatmap(ax: Any, data: list[Series], span: tuple[float, float]) -> None:
    """Cumulative ``le`` buckets (legend ``{{le}}``) as counts per bucket over time."""
    from datetime import UTC, datetime

    import numpy as np

    def bound(s: Series) -> float:
        return math.inf if s.name == "+Inf" else float(s.name)

    ordered = sorted(data, key=bound)
    length = min(len(s.values) for s in ordered)
    cumulative = np.array([s.values[-length:] for s in ordered])
    counts = np.diff(cumulative, axis=0, prepend=0.0)
    when = [datetime.fromtimestamp(t, UTC) for t in ordered[0].times[-length:]]
    ax.pcolormesh(when, np.arange(len(ordered)), np.nan_to_num(counts), cmap="viridis")
    ax.set_yticks(range(len(ordered)), [f"≤ {s.name}" for s in ordered], fontsize=6)
    _time_axis(ax, span)


def _box(fig: Any, panel: Panel, top_in: float, legend: bool) -> list[float]:
    """The axes rectangle (figure fractions) of ``panel``, its title, tick labels and legend
    column inside the panel's box, so neighbours never overlap."""
    width, height = fig.get_size_inches()
    grid = panel.grid
    # Bar gauges are labelled by their series' names, as wide as a segment's.
    left = grid["x"] * COLUMN_IN + (BAR_LABELS_IN if panel.kind == "bargauge" else YTICKS_IN)
    right = (grid["x"] + grid["w"]) * COLUMN_IN - PAD_IN - (LEGEND_IN if legend else 0.0)
    top = top_in + grid["y"] * ROW_IN + TITLE_IN
    # A bar gauge's x axis carries its unit below the tick labels.
    ticks = XTICKS_IN + (0.15 if panel.kind == "bargauge" else 0.0)
    bottom = top_in + (grid["y"] + grid["h"]) * ROW_IN - ticks
    return [left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height]


def render(
    dashboard_path: Path,
    prometheus_url: str,
    out_png: Path,
    start: float,
    end: float,
    step: float = 5.0,
    rate_interval: str = "1m",
) -> dict[str, int]:
    """Render one dashboard to ``out_png``; returns the number of series with data of each
    panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(Path(dashboard_path).read_text())
    found = panels(dashboard, rate_interval)
    headers = rows(dashboard)
    bottom = max(p.grid["y"] + p.grid["h"] for p in found)
    top_in = 0.6  # the dashboard's title
    fig = plt.figure(figsize=(GRID_COLUMNS * COLUMN_IN, top_in + bottom * ROW_IN))
    height = fig.get_size_inches()[1]
    counts = {}
    for panel in found:
        # A series without one finite value (a quantile of no observations) draws nothing.
        data = [
            series
            for expr, fmt in panel.targets
            for series in query_range(prometheus_url, expr, start, end, step, fmt)
            if any(math.isfinite(v) for v in series.values)
        ]
        ax = fig.add_axes(_box(fig, panel, top_in, legend=False))
        if _draw(ax, panel, data, (start, end)):  # the legend went right: make room for it
            for axes in (ax, *ax.get_shared_x_axes().get_siblings(ax)):
                axes.set_position(_box(fig, panel, top_in, legend=True))
        counts[panel.title] = len(data)
    for title, y in headers:
        fig.text(
            0.1 / fig.get_size_inches()[0],
            1 - (top_in + (y + 0.6) * ROW_IN) / height,
            title,
            fontsize=11,
            fontweight="bold",
        )
    span = " to ".join(time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in (start, end))
    fig.suptitle(f"{dashboard['title']} ({span} UTC)", fontsize=13, y=1 - 0.15 / height)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
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
