"""The evaluate step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c

log = logging.getLogger("fraud.pipeline")

# What evaluate leaves in its blessing artifact for push to read.
SCORES_FILE = "eval_scores.npy"
VERDICT_FILE = "verdict.json"


def evaluate_step(
    model_dir: str,
    eval_path: str,
    model_base_path: str,
    blessing_dir: str,
    gate: dict,
    chosen_dir: str | None = None,
):
    """Every family the train step exported under ``model_dir``, measured on the same window
    and gated against the served model; the best by average precision (``choose_family``) is
    the verdict's, and is copied to ``chosen_dir`` (when given) for push.

    Returns the Verdict plus the eval labels and the chosen family's scores for the UI's curves.
    """
    from components.evaluate.evaluator import (
        GateConfig,
        Verdict,
        bless,
        choose_family,
        compute_metrics,
    )
    from components.train.job import family_dirs
    from core.model import SavedModelScorer, model_versions

    cfg = GateConfig(**gate)
    evaluation = pd.read_parquet(eval_path)
    baseline = baseline_version = None
    versions = model_versions(model_base_path) if model_base_path else []
    if versions:
        baseline_version = versions[-1]
        served = SavedModelScorer(Path(model_base_path) / str(baseline_version))
        baseline = compute_metrics(evaluation, served.score(evaluation))
    dirs = family_dirs(model_dir)
    families, scores = {}, {}
    for family, path in dirs.items():
        scores[family] = SavedModelScorer(path).score(evaluation)
        candidate, thresholds = _measure(evaluation, scores[family], cfg)
        blessed, reasons = bless(candidate, baseline, cfg)
        families[family] = {
            "blessed": blessed,
            "reasons": reasons,
            "candidate": candidate,
            "thresholds": thresholds,
        }
    family = choose_family(families)
    chosen = families[family]
    verdict = Verdict(
        chosen["blessed"],
        chosen["reasons"],
        chosen["candidate"],
        baseline,
        baseline_version,
        chosen["thresholds"],
        family,
        families,
    )
    out = Path(blessing_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERDICT_FILE).write_text(json.dumps(verdict.to_dict(), indent=2))
    np.save(out / SCORES_FILE, scores[family])
    if chosen_dir:
        shutil.copytree(dirs[family], chosen_dir, dirs_exist_ok=True)
    if verdict.blessed:
        log.info(
            "evaluate: BLESSED %s %s (baseline v%s: %s)",
            family,
            verdict.candidate,
            baseline_version,
            baseline,
        )
    else:
        log.warning("evaluate: NOT blessed (%s): %s", family, "; ".join(verdict.reasons))
    return verdict, evaluation[c.LABEL].to_numpy(), scores[family]


def _measure(evaluation: pd.DataFrame, scores: np.ndarray, cfg) -> tuple[dict, dict]:
    """A candidate's metrics (with its alert figures) and its thresholds from the budgets."""
    from components.evaluate.evaluator import (
        alert_metrics,
        compute_metrics,
        thresholds_from_budget,
    )

    candidate = compute_metrics(evaluation, scores)
    thresholds = thresholds_from_budget(scores, cfg)
    candidate.update(alert_metrics(evaluation[c.LABEL].to_numpy(), scores, thresholds[c.REVIEW]))
    return candidate, thresholds
