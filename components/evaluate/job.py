"""The evaluate step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c

log = logging.getLogger("fraud.pipeline")

# What evaluate leaves in its blessing artifact for push to read.
SCORES_FILE = "eval_scores.npy"
VERDICT_FILE = "verdict.json"


def evaluate_step(
    model_dir: str, eval_path: str, model_base_path: str, blessing_dir: str, gate: dict
):
    """Returns the Verdict plus the eval labels/scores for the UI's curves."""
    from components.evaluate.evaluator import (
        GateConfig,
        Verdict,
        alert_metrics,
        bless,
        compute_metrics,
        thresholds_from_budget,
    )
    from core.model import SavedModelScorer, model_versions

    cfg = GateConfig(**gate)
    evaluation = pd.read_parquet(eval_path)
    scores = SavedModelScorer(model_dir).score(evaluation)
    candidate = compute_metrics(evaluation, scores)
    thresholds = thresholds_from_budget(scores, cfg)
    candidate.update(alert_metrics(evaluation[c.LABEL].to_numpy(), scores, thresholds[c.REVIEW]))
    baseline = baseline_version = None
    versions = model_versions(model_base_path) if model_base_path else []
    if versions:
        baseline_version = versions[-1]
        served = SavedModelScorer(Path(model_base_path) / str(baseline_version))
        baseline = compute_metrics(evaluation, served.score(evaluation))
    blessed, reasons = bless(candidate, baseline, cfg)
    verdict = Verdict(blessed, reasons, candidate, baseline, baseline_version, thresholds)
    out = Path(blessing_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERDICT_FILE).write_text(json.dumps(verdict.to_dict(), indent=2))
    np.save(out / SCORES_FILE, scores)
    if blessed:
        log.info("evaluate: BLESSED %s (baseline v%s: %s)", candidate, baseline_version, baseline)
    else:
        log.warning("evaluate: NOT blessed: %s", "; ".join(reasons))
    return verdict, evaluation[c.LABEL].to_numpy(), scores
