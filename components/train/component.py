"""The train step's KFP component: typed artifacts in, ``job.train_step``, metrics out.

KFP ships this function's source to its container on its own: every import it needs is inside
its body, by package path.
"""

from kfp.dsl import Artifact, Input, Metrics, Model, Output


def train(
    transform_output: Input[Artifact],
    hidden_units: str,
    dropout: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    model_families: str,
    gbt_num_trees: int,
    gbt_max_depth: int,
    gbt_shrinkage: float,
    gbt_min_examples: int,
    gbt_split_axis: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    import logging

    from components.train.job import train_step
    from core.metadata import parse_model_families

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
    gbt_params = {
        "num_trees": gbt_num_trees,
        "max_depth": gbt_max_depth,
        "shrinkage": gbt_shrinkage,
        "min_examples": gbt_min_examples,
        "split_axis": gbt_split_axis,
        "seed": seed,
    }
    families = parse_model_families(model_families)
    model.metadata["families"] = ",".join(families)
    figures = train_step(transform_output.path, model.path, hparams, families, gbt_params)
    for key, value in figures.items():
        metrics.log_metric(key, value)
