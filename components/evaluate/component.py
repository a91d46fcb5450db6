"""The evaluate step's KFP component: typed artifacts in, ``job.evaluate_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(
    model: Input[Model],
    eval_data: Input[Dataset],
    model_base_path: str,
    min_auc: float,
    min_average_precision: float,
    regression_tolerance: float,
    review_budget: float,
    block_budget: float,
    metrics: Output[Metrics],
    curves: Output[ClassificationMetrics],
    blessing: Output[Artifact],
    chosen: Output[Model],
):
    import logging

    from components.evaluate.evaluator import comparison_table, confusion, roc_points
    from components.evaluate.job import evaluate_step

    logging.basicConfig(level=logging.INFO)
    gate = {
        "min_auc": min_auc,
        "min_average_precision": min_average_precision,
        "regression_tolerance": regression_tolerance,
        "review_budget": review_budget,
        "block_budget": block_budget,
    }
    verdict, labels, scores = evaluate_step(
        model.path, eval_data.path, model_base_path, blessing.path, gate, chosen.path
    )
    for family, result in verdict.families.items():
        for key, value in result["candidate"].items():
            metrics.log_metric(f"{family}_{key}", value)
        metrics.log_metric(f"{family}_blessed", float(result["blessed"]))
    chosen.metadata["model_family"] = verdict.model_family
    blessing.metadata["model_family"] = verdict.model_family
    logging.getLogger("fraud.pipeline").info(
        "evaluate: model families on the evaluation window\n%s",
        comparison_table(verdict.families, verdict.model_family),
    )
    for key, value in verdict.candidate.items():
        metrics.log_metric(key, value)
    for key, value in (verdict.baseline or {}).items():
        metrics.log_metric(f"baseline_{key}", value)
    for key, value in verdict.thresholds.items():
        metrics.log_metric(f"threshold_{key}", value)
    metrics.log_metric("blessed", float(verdict.blessed))
    blessing.metadata["blessed"] = verdict.blessed
    blessing.metadata["reasons"] = "; ".join(verdict.reasons)
    roc = roc_points(labels, scores)
    curves.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    curves.log_confusion_matrix(
        ["legit", "fraud"], confusion(labels, scores, verdict.thresholds["review"])
    )
