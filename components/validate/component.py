"""The validate step's KFP component: typed artifacts in, ``job.validate_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def validate(
    train_data: Input[Dataset],
    schema_path: str,
    model_base_path: str,
    statistics: Output[Artifact],
    anomalies: Output[Artifact],
    drift: Output[Metrics],
):
    import logging

    from components.validate.job import validate_step

    logging.basicConfig(level=logging.INFO)
    found = validate_step(
        train_data.path, schema_path, model_base_path, statistics.path, anomalies.path
    )
    for key, value in found.items():
        drift.log_metric(key, value)
