"""The transform step's KFP component: typed artifacts in, ``job.transform_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def transform(
    train_data: Input[Dataset],
    eval_data: Input[Dataset],
    beam_args: str,
    transform_output: Output[Artifact],
    counts: Output[Metrics],
):
    import json
    import logging

    from components.transform.job import transform_step

    logging.basicConfig(level=logging.INFO)
    args = json.loads(beam_args) if beam_args.strip() else []
    for key, value in transform_step(
        train_data.path, eval_data.path, transform_output.path, args
    ).items():
        counts.log_metric(key, value)
