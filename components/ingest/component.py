"""The ingest step's KFP component: typed artifacts in, ``job.ingest_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Dataset, Metrics, Output


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
    schedule_time: str,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    counts: Output[Metrics],
):
    import logging

    from components.ingest.job import ingest_step

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
        schedule_time=schedule_time,
    )
    for key, value in info.items():
        if isinstance(value, int | float):
            counts.log_metric(key, value)
        else:
            train_data.metadata[key] = value
            eval_data.metadata[key] = value
