"""Evaluate: metrics on the evaluation window, decision thresholds, and the blessing gate.

The candidate is evaluated through its exported ``serving_default`` (what would be pushed is what
is measured). The baseline is the currently served model scored on the same window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from core import contract as c
from core.metadata import MLP


@dataclass(frozen=True)
class GateConfig:
    min_auc: float = 0.80
    min_average_precision: float = 0.20
    # The candidate may not fall more than this far (relative) below the served model's AP.
    regression_tolerance: float = 0.05
    # Alert budget: share of transactions that may go to review (or block, a subset).
    review_budget: float = 0.01
    block_budget: float = 0.002


def card_precision_at_k(df: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """Per day, rank cards by their highest score that day; share of compromised cards in the top
    k; averaged over days. A card is compromised that day if any of its transactions was fraud."""
    frame = pd.DataFrame(
        {
            "day": pd.to_datetime(df[c.TIMESTAMP], utc=True).dt.floor("D").to_numpy(),
            "card": df[c.CUSTOMER_ID].to_numpy(),
            "score": scores,
            "fraud": df[c.LABEL].to_numpy(),
        }
    )
    per_card = frame.groupby(["day", "card"], sort=False).agg(
        score=("score", "max"), fraud=("fraud", "max")
    )
    per_card = per_card.reset_index().sort_values(["day", "score"], ascending=[True, False])
    top = per_card.groupby("day", sort=False).head(k)
    return float(top.groupby("day")["fraud"].mean().mean())


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    return float(tpr[fpr <= max_fpr].max()) if (fpr <= max_fpr).any() else 0.0


def thresholds_from_budget(scores: np.ndarray, gate: GateConfig) -> dict[str, float]:
    """Score cut-offs that alert at most the budgeted share of transactions."""
    review = float(np.quantile(scores, 1 - gate.review_budget))
    block = float(np.quantile(scores, 1 - gate.block_budget))
    return {"review": review, "block": max(block, review)}


def compute_metrics(df: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = df[c.LABEL].to_numpy()
    return {
        "auc_roc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
        "card_precision_at_100": card_precision_at_k(df, scores, 100),
        "recall_at_1pct_fpr": recall_at_fpr(y, scores, 0.01),
        "eval_rows": float(len(y)),
        "eval_frauds": float(y.sum()),
    }


def alert_metrics(y: np.ndarray, scores: np.ndarray, review: float) -> dict[str, float]:
    """Precision and recall of the alerts (score >= ``review``): the figures live monitoring
    holds the served model to (NaN when there is no alert, or no fraud)."""
    from core.metadata import ALERT_PRECISION, ALERT_RECALL

    alerted = scores >= review
    fraud = y.astype(bool)
    hits = float((alerted & fraud).sum())
    return {
        ALERT_PRECISION: hits / alerted.sum() if alerted.any() else float("nan"),
        ALERT_RECALL: hits / fraud.sum() if fraud.any() else float("nan"),
    }


def roc_points(y: np.ndarray, scores: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """A thinned ROC curve for the Kubeflow UI (it renders every point it is given)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, scores, drop_intermediate=True)
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    thr = np.clip(thr[idx], 0.0, 1.0)  # sklearn's first threshold is +inf
    return {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist(), "thresholds": thr.tolist()}


def confusion(y: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    pred = scores >= threshold
    return [
        [int(((y == 0) & ~pred).sum()), int(((y == 0) & pred).sum())],
        [int(((y == 1) & ~pred).sum()), int(((y == 1) & pred).sum())],
    ]


@dataclass
class Verdict:
    """The gate's decision on the chosen family (``model_family``) and, in ``families``, each
    compared family's ``blessed``, ``reasons``, ``candidate`` metrics and ``thresholds``."""

    blessed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict = field(default_factory=dict)
    baseline: dict | None = None
    baseline_version: int | None = None
    thresholds: dict = field(default_factory=dict)
    model_family: str = MLP
    families: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def bless(candidate: dict, baseline: dict | None, gate: GateConfig) -> tuple[bool, list[str]]:
    """Floors hold AND no regression beyond tolerance against the served model (if any)."""
    reasons = []
    if candidate["auc_roc"] < gate.min_auc:
        reasons.append(f"AUC ROC {candidate['auc_roc']:.4f} below floor {gate.min_auc}")
    if candidate["average_precision"] < gate.min_average_precision:
        reasons.append(
            f"average precision {candidate['average_precision']:.4f} below floor "
            f"{gate.min_average_precision}"
        )
    if baseline is not None:
        floor = baseline["average_precision"] * (1 - gate.regression_tolerance)
        if candidate["average_precision"] < floor:
            reasons.append(
                f"average precision {candidate['average_precision']:.4f} regresses beyond "
                f"{gate.regression_tolerance:.0%} of the served model's "
                f"{baseline['average_precision']:.4f} on the same window"
            )
    return not reasons, reasons


def choose_family(families: Mapping[str, Mapping]) -> str:
    """The family to push: the highest average precision among the blessed ones, or among all
    when none is blessed (push then refuses it). A tie goes to the family listed first."""
    if not families:
        raise ValueError("choose_family: no model family was evaluated")
    blessed = [f for f, result in families.items() if result["blessed"]] or list(families)
    return max(blessed, key=lambda f: families[f]["candidate"]["average_precision"])


# The comparison table's metric columns: (metric key, heading).
COMPARED = (
    ("average_precision", "AP"),
    ("auc_roc", "AUC ROC"),
    ("card_precision_at_100", "CP@100"),
    ("recall_at_1pct_fpr", "recall@1%FPR"),
)


def comparison_table(families: Mapping[str, Mapping], chosen: str) -> str:
    """The families side by side on the evaluation window, one line each, the chosen marked."""
    head = f"{'family':<8}" + "".join(f"{h:>14}" for _, h in COMPARED) + "  blessed"
    lines = [head]
    for family, result in families.items():
        cells = "".join(f"{result['candidate'][k]:>14.4f}" for k, _ in COMPARED)
        mark = "  <- chosen" if family == chosen else ""
        lines.append(f"{family:<8}{cells}  {'yes' if result['blessed'] else 'no':<7}{mark}")
    return "\n".join(lines)
