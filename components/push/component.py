"""The push step's KFP component: typed artifacts in, ``job.push_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


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

    from components.push.job import push_step

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
