"""Summary table and HTML report of an end-to-end run (`make run`).

Inputs are what the run produced: the decisions topic, the ground truth of the replayed data, the
drift monitor's per-window records, the retrain history, and the pushed models (scored offline on
the same post-drift traffic for the PR curves).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from streaming.messages import DecisionFields as D

ALERTS = (c.REVIEW, c.BLOCK)


@dataclass
class Phase:
    name: str
    rows: int
    frauds: int
    average_precision: float | None
    version: str


def _ap(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s)) if len(y) and 0 < y.sum() < len(y) else None


def join_truth(decisions: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per transaction (the first decision; at-least-once may repeat some) + labels."""
    first = decisions.drop_duplicates(c.TRANSACTION_ID, keep="first")
    cols = [c.TRANSACTION_ID, c.TIMESTAMP, c.LABEL]
    cols += [name for name in (c.AMOUNT, c.FRAUD_PATTERN) if name in truth.columns]
    return first.merge(truth[cols], on=c.TRANSACTION_ID, how="inner", suffixes=("_decision", ""))


def phases(joined: pd.DataFrame, onset: pd.Timestamp, first_version: str) -> list[Phase]:
    t = joined[c.TIMESTAMP]
    version = joined["model_version"].astype(str)
    parts = [
        ("before drift (first model)", (t < onset) & (version == first_version), first_version),
        ("after drift, first model", (t >= onset) & (version == first_version), first_version),
    ]
    for v in sorted(set(version) - {first_version}, key=lambda x: int(x)):
        parts.append((f"after retrain (version {v})", version == v, v))
    out = []
    for name, mask, v in parts:
        sel = joined.loc[mask]
        y = sel[c.LABEL].to_numpy()
        out.append(Phase(name, len(sel), int(y.sum()), _ap(y, sel["score"].to_numpy()), v))
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(
    joined: pd.DataFrame,
    onset: pd.Timestamp,
    first_version: str,
    windows: list[dict],
    pr_scores: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    figs = {}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    old = joined["model_version"].astype(str) == first_version
    bins = np.linspace(0, 1, 41)
    for label, mask in (
        ("before drift", old & (joined[c.TIMESTAMP] < onset)),
        ("after drift (first model)", old & (joined[c.TIMESTAMP] >= onset)),
        ("after retrain (new model)", ~old),
    ):
        if mask.any():
            ax.hist(
                joined.loc[mask, "score"], bins=bins, density=True, histtype="step", label=label
            )
    ax.set_yscale("log")
    ax.set_xlabel("fraud score")
    ax.legend()
    ax.set_title("Score distributions")
    figs["scores"] = _png(fig)
    plt.close(fig)

    if windows:
        from monitoring.drift import DriftConfig

        w = pd.DataFrame(windows)
        night_cols = [k for k in w.columns if k.startswith("night_z_")]
        fig, axes = plt.subplots(2 if night_cols else 1, 1, figsize=(7, 6 if night_cols else 3.5))
        axes = np.atleast_1d(axes)
        ax = axes[0]
        x = pd.to_datetime(w["end_time"], utc=True)
        for col in [k for k in w.columns if k.startswith("psi_")][:6]:
            ax.plot(x, w[col], label=col[4:])
        if "alert_rate_ratio" in w:
            ax.plot(x, w["alert_rate_ratio"], "k--", label="alert rate / expected")
        ax.axvline(onset, color="red", lw=1)
        ax.set_title("Drift metrics per window (red: onset)")
        ax.legend(fontsize=7)
        if night_cols:
            ax = axes[1]
            z = w[night_cols]
            worst = z.max().idxmax()
            ax.plot(x, z.max(axis=1), label="largest night excess z")
            ax.plot(x, z[worst], lw=0.8, label=worst[len("night_z_") :])
            threshold = DriftConfig().night_z_threshold
            if threshold is not None:
                ax.axhline(threshold, color="k", ls="--", lw=1, label="default threshold")
            ax.axvline(onset, color="red", lw=1)
            ax.set_title("Night excess per window (cell excess in dispersion-widened sd)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        figs["drift"] = _png(fig)
        plt.close(fig)

    if pr_scores:
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, (y, s) in pr_scores.items():
            p, r, _ = precision_recall_curve(y, s)
            ax.plot(r, p, label=f"{name} (AP {_ap(y, s):.3f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Post-drift traffic: old vs new model")
        ax.legend()
        figs["pr"] = _png(fig)
        plt.close(fig)
    return figs


def analyst_figures(joined: pd.DataFrame, budgets: dict[str, float]) -> pd.DataFrame:
    """The analyst's key figures per event-time day and model version, from ``join_truth``'s
    rows: alerts (review + block), frauds, caught frauds, precision and recall of the alerts,
    the fraud money blocked, reviewed and missed (approved), and the alert budget (the version's
    expected alert rate times its transactions)."""
    decision = joined[D.DECISION]
    fraud = joined[c.LABEL].astype(bool)
    alert = decision.isin(ALERTS)
    frame = pd.DataFrame(
        {
            "day": joined[c.TIMESTAMP].dt.floor("D"),
            "version": joined[D.MODEL_VERSION].astype(str),
            "alerts": alert,
            "frauds": fraud,
            "caught": alert & fraud,
        }
    )
    for name, chosen in (("blocked", c.BLOCK), ("reviewed", c.REVIEW), ("missed", c.APPROVE)):
        frame[name] = joined[c.AMOUNT].where(fraud & (decision == chosen), 0.0)
    out = frame.groupby(["day", "version"]).agg(
        transactions=("alerts", "size"),
        **{k: (k, "sum") for k in ("alerts", "frauds", "caught", "blocked", "reviewed", "missed")},
    )
    out["precision"] = out["caught"] / out["alerts"].where(out["alerts"] > 0)
    out["recall"] = out["caught"] / out["frauds"].where(out["frauds"] > 0)
    versions = out.index.get_level_values("version")
    out["budget"] = out["transactions"] * versions.map(budgets).astype(float)
    return out.reset_index()


def analyst_plot(figures: pd.DataFrame) -> str:
    """``analyst_figures`` over the run as one PNG (base64): precision and recall per version,
    fraud money by decision, alert volume against the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 9), sharex=True)
    ax = axes[0]
    for version, rows in figures.groupby("version"):
        line = ax.plot(rows["day"], rows["precision"], marker=".", label=f"precision v{version}")
        color = line[0].get_color()
        ax.plot(rows["day"], rows["recall"], ls="--", color=color, label=f"recall v{version}")
    ax.set_ylim(0, 1.05)
    ax.set_title("Alert precision and recall per day, per model version")
    ax.legend(fontsize=7)
    daily = figures.groupby("day").sum(numeric_only=True)
    ax = axes[1]
    for name in ("blocked", "reviewed", "missed"):
        ax.plot(daily.index, daily[name], marker=".", label=name)
    ax.set_title("Fraud money blocked, sent to review and missed per day")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.bar(daily.index, daily["alerts"], width=0.8, label="alerts (review + block)")
    ax.plot(daily.index, daily["budget"], "k--", marker=".", label="alert budget")
    ax.set_title("Alert volume per day against the budget")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def utc(value: str) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _rates(alerts: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    caught = int((alerts & (y == 1)).sum())
    return {
        "precision": caught / alerts.sum() if alerts.sum() else None,
        "recall": caught / y.sum() if y.sum() else None,
        "alert_rate": float(alerts.mean()) if len(alerts) else None,
    }


def shadow_comparison(shadow: list[dict], truth: pd.DataFrame) -> list[dict]:
    """Stable vs canary on the transactions both scored (the shadow-scores records), judged
    on the simulator's labels: one entry per canary version."""
    from streaming.messages import ShadowFields as f

    rows = [
        (r[f.STABLE_VERSION], r[f.CANARY_VERSION], tx, s != c.APPROVE, k != c.APPROVE)
        for r in shadow
        for tx, s, k in zip(
            r[f.TRANSACTION_IDS], r[f.STABLE_DECISIONS], r[f.CANARY_DECISIONS], strict=True
        )
    ]
    columns = ["stable_version", "canary_version", c.TRANSACTION_ID, "stable", "canary"]
    paired = pd.DataFrame(rows, columns=columns).drop_duplicates(c.TRANSACTION_ID)
    paired = paired.merge(truth[[c.TRANSACTION_ID, c.LABEL]], on=c.TRANSACTION_ID)
    out = []
    for (stable, canary), part in paired.groupby(["stable_version", "canary_version"]):
        y = part[c.LABEL].to_numpy()
        out.append(
            {
                "stable_version": int(stable),
                "canary_version": int(canary),
                "transactions": len(part),
                "frauds": int(y.sum()),
                "stable": _rates(part["stable"].to_numpy(), y),
                "canary": _rates(part["canary"].to_numpy(), y),
            }
        )
    return out


def rollout_figures(history: list[dict], shadow: list[dict], events: list[dict]) -> dict:
    """When the first retrain's version was canary serving (its first shadow record) and when
    it was promoted (its ``promoted`` rollout event), in seconds from the retrain trigger."""
    from monitoring.canary import EVENT, PROMOTED
    from monitoring.retrain_history import PUSHED
    from streaming.messages import ShadowFields as f

    started = [h for h in history if h.get("status") == "started"]
    pushed = [h for h in history if h.get("status") == PUSHED]
    steps = [e for e in events if e.get("event") == EVENT]
    figures: dict = {"rollout_steps": steps}
    if not started or not pushed:
        return figures
    t0 = utc(started[0]["started_at"])
    version = int(pushed[0]["version"])
    shadowed = [utc(r[f.SHADOWED_AT]) for r in shadow if r[f.CANARY_VERSION] == version]
    promoted = [
        utc(e["detected_at"])
        for e in steps
        if e.get("kind") == PROMOTED and e.get("canary_version") == version
    ]
    figures.update(
        canary_version=version,
        trigger_to_canary_s=(min(shadowed) - t0).total_seconds() if shadowed else None,
        trigger_to_promoted_s=(promoted[0] - t0).total_seconds() if promoted else None,
        promoted_at=promoted[0].strftime(c.TIMESTAMP_FORMAT) if promoted else None,
    )
    return figures


def _shadow_rows(summary: dict) -> list[tuple[str, str]]:
    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    def num(x):
        return "n/a" if x is None else f"{x:.3f}"

    rows = []
    for s in summary.get("shadow", []):
        pair = f"shadow: canary v{s['canary_version']} vs stable v{s['stable_version']}"
        stable, canary = s["stable"], s["canary"]
        rows += [
            (f"{pair}, paired transactions (frauds)", f"{s['transactions']:,} ({s['frauds']:,})"),
            (f"{pair}, precision", f"{num(stable['precision'])} vs {num(canary['precision'])}"),
            (f"{pair}, recall", f"{num(stable['recall'])} vs {num(canary['recall'])}"),
            (f"{pair}, alert rate", f"{pct(stable['alert_rate'])} vs {pct(canary['alert_rate'])}"),
        ]
    return rows


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    rows = [
        ("transactions scored", f"{summary['scored']:,}"),
        ("duplicate decisions (at-least-once)", f"{summary['duplicates']:,}"),
        ("throughput (tx/s)", num(summary["throughput"], ",.0f")),
        (
            "end-to-end latency p50 / p99 (ms)",
            f"{num(summary['p50_ms'], '.1f')} / {num(summary['p99_ms'], '.1f')}",
        ),
        (
            "latency p50 / p99 outside the retrain (ms)",
            f"{num(summary.get('p50_ms_outside_retrain'), '.1f')} / "
            f"{num(summary.get('p99_ms_outside_retrain'), '.1f')}",
        ),
        ("alerts (review + block)", f"{summary['alerts']:,}"),
    ]
    for p in summary["phases"]:
        rows.append((f"AP {p['name']}", num(p["average_precision"], ".3f")))
    rows += [
        ("drift onset (event time)", summary["onset"]),
        ("drift detected (event time)", summary["detected_at"] or "not detected"),
        ("drift alarms before the onset", str(summary["false_alarms_before_onset"])),
        ("detection delay (simulated hours)", num(summary["detection_delay_h"], ".1f")),
        (
            "retrain trigger -> canary serving (shadow) (s)",
            num(summary.get("trigger_to_canary_s"), ".0f"),
        ),
        ("retrain trigger -> promoted (s)", num(summary.get("trigger_to_promoted_s"), ".0f")),
        ("canary promoted at (wall clock)", summary.get("promoted_at") or "not promoted"),
        ("retrain trigger -> new model deciding (s)", num(summary["trigger_to_serving_s"], ".0f")),
        ("AP after retrain / AP before drift", num(summary["recovery_ratio"], ".2f")),
    ]
    if "dashboards" in summary:
        from app.demo_dashboards import summary_line

        rows.append(("Grafana dashboards", summary_line(summary["dashboards"])))
    return rows + _shadow_rows(summary)


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_html(
    path: Path,
    rows: list[tuple[str, str]],
    figs: dict[str, str],
    notes: list[str],
    dashboards: tuple[Path, ...] | list[Path] = (),
) -> Path:
    """The report: the table, the notes, the figures (base64 PNGs) and the dashboard PNGs, all
    embedded so that the file stands alone."""
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    imgs = "".join(
        f'<p><img src="data:image/png;base64,{b}" alt="{k}"></p>' for k, b in figs.items()
    )
    if dashboards:
        imgs += "<h2>Grafana dashboards (Prometheus scraping this run)</h2>" + "".join(
            f"<h3>{html.escape(png.stem)}</h3><p><img style='max-width:100%' "
            f"src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}' "
            f"alt='{html.escape(png.stem)}'></p>"
            for png in dashboards
        )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Fraud platform run</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}"
        "td{padding:2px 12px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>End-to-end run</h1><table>{table}</table><ul>{notes_html}</ul>{imgs}</body></html>"
    )
    return path


def load_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
