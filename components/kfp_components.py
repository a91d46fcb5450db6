"""The pipeline's KFP v2 components: small typed functions over components.steps.jobs.

Each body only converts KFP artifacts to paths, calls the plain step, and logs metrics. Heavy
imports live inside the bodies: KFP ships each body's source to its container on its own.
"""

import os

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/fraud-platform/fraud:0.1.0"


def ingest(
    data_path: str,
    train_start: str,
    train_end: str,
    eval_start: str,
    eval_end: str,
    as_of: str,
    train_days: int,
    eval_days: int,
    label_delay_days: int,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    counts: Output[Metrics],
):
    import logging

    from components.steps.jobs import ingest_step

    logging.basicConfig(level=logging.INFO)
    info = ingest_step(
        data_path,
        train_data.path,
        eval_data.path,
        label_delay_days=label_delay_days,
        train_start=train_start,
        train_end=train_end,
        eval_start=eval_start,
        eval_end=eval_end,
        as_of=as_of,
        train_days=train_days,
        eval_days=eval_days,
    )
    for key, value in info.items():
        if isinstance(value, int | float):
            counts.log_metric(key, value)
        else:
            train_data.metadata[key] = value
            eval_data.metadata[key] = value


def validate(
    train_data: Input[Dataset],
    schema_path: str,
    model_base_path: str,
    statistics: Output[Artifact],
    anomalies: Output[Artifact],
    drift: Output[Metrics],
):
    import logging

    from components.steps.jobs import validate_step

    logging.basicConfig(level=logging.INFO)
    found = validate_step(
        train_data.path, schema_path, model_base_path, statistics.path, anomalies.path
    )
    for key, value in found.items():
        drift.log_metric(key, value)


def transform(
    train_data: Input[Dataset],
    eval_data: Input[Dataset],
    beam_args: str,
    transform_output: Output[Artifact],
    counts: Output[Metrics],
):
    import json
    import logging

    from components.steps.jobs import transform_step

    logging.basicConfig(level=logging.INFO)
    args = json.loads(beam_args) if beam_args.strip() else []
    for key, value in transform_step(
        train_data.path, eval_data.path, transform_output.path, args
    ).items():
        counts.log_metric(key, value)


def train(
    transform_output: Input[Artifact],
    hidden_units: str,
    dropout: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    import logging

    from components.steps.jobs import train_step

    logging.basicConfig(level=logging.INFO)
    hparams = {
        "hidden_units": hidden_units,
        "dropout": dropout,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "epochs": epochs,
        "patience": patience,
        "seed": seed,
    }
    for key, value in train_step(transform_output.path, model.path, hparams).items():
        metrics.log_metric(key, value)


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
):
    import logging

    from components.steps.evaluator import confusion, roc_points
    from components.steps.jobs import evaluate_step

    logging.basicConfig(level=logging.INFO)
    gate = {
        "min_auc": min_auc,
        "min_average_precision": min_average_precision,
        "regression_tolerance": regression_tolerance,
        "review_budget": review_budget,
        "block_budget": block_budget,
    }
    verdict, labels, scores = evaluate_step(
        model.path, eval_data.path, model_base_path, blessing.path, gate
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


def push(
    model: Input[Model],
    blessing: Input[Artifact],
    train_data: Input[Dataset],
    statistics: Input[Artifact],
    model_base_path: str,
    model_name: str,
    label_delay_days: int,
    pushed: Output[Artifact],
):
    import json
    import logging
    from pathlib import Path

    from components.steps.jobs import push_step

    logging.basicConfig(level=logging.INFO)
    result = push_step(
        model.path,
        blessing.path,
        train_data.path,
        statistics.path,
        model_base_path,
        model_name,
        label_delay_days,
        dict(train_data.metadata),
    )
    Path(pushed.path).write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        pushed.metadata[key] = value if not isinstance(value, list) else "; ".join(value)


STEPS = (ingest, validate, transform, train, evaluate, push)


def component_image() -> str:
    """The image the compiled pipeline references: FRAUD_COMPONENT_IMAGE or the default."""
    return os.environ.get("FRAUD_COMPONENT_IMAGE", DEFAULT_IMAGE)


def make_components(image: str | None = None) -> dict:
    """KFP components for every step, on ``image``; no network at run time (no pip install)."""
    image = image or component_image()
    return {
        fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in STEPS
    }
