"""The one parser of NAME=VALUE pipeline parameters (fraud pipeline --set, fraud retrain --set,
fraud stream consume --retrain-set)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from components.train.gbt import SPLIT_AXES
from pipelines.params import parse_assignments, parse_params, typed_params


def test_values_are_typed_by_the_pipeline_spec() -> None:
    params = parse_params(["epochs=3", "learning-rate=0.01", "model_name=fraud", "batch_size=512"])
    assert params == {"epochs": 3, "learning_rate": 0.01, "model_name": "fraud", "batch_size": 512}
    assert type(params["learning_rate"]) is float
    # A string parameter stays a string even when it looks like a number.
    assert parse_params(["train_start=2025"]) == {"train_start": "2025"}
    assert parse_params(None) == {} and parse_params([]) == {}
    assert typed_params({"epochs": None, "eval_days": "7"}) == {"eval_days": 7}


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (["epochs"], r"--retrain-set 'epochs': expected NAME=VALUE"),
        (["=3"], "expected NAME=VALUE"),
        (["epoch=3"], r"--retrain-set epoch: unknown pipeline parameter; known: \[.*'epochs'"),
        (["epochs=three"], r"--retrain-set epochs='three': invalid literal"),
    ],
)
def test_bad_assignments_name_the_flag_and_the_value(pairs: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_params(pairs, "--retrain-set")


def test_assignments_keep_text_until_typed() -> None:
    assert parse_assignments(["a-b=1=2"]) == {"a_b": "1=2"}


def test_pipeline_defaults_come_from_the_dataclasses_and_settings() -> None:
    """The signature restates no default: a retyped one would drift from the dataclasses."""
    from components.evaluate.evaluator import GateConfig
    from components.train.gbt import GBTParams
    from components.train.trainer import HParams
    from core.metadata import MLP
    from core.settings import Settings
    from monitoring.retrain import RetrainConfig
    from pipelines.pipeline import create_pipeline

    inputs = create_pipeline().component_spec.inputs
    defaults = {name: spec.default for name, spec in inputs.items()}
    # max_class_weight is a modelling constant, not tuned per run.
    for config, left_out in ((HParams(), {"max_class_weight"}), (GateConfig(), set())):
        names = {f.name for f in fields(config)} - left_out
        assert names <= set(defaults), f"{type(config).__name__} fields not in the pipeline"
        assert {n: defaults[n] for n in names} == {n: getattr(config, n) for n in names}
    # The trees share the network's seed; their other parameters are prefixed.
    gbt = GBTParams()
    names = {f.name for f in fields(gbt)} - {"seed"}
    assert {n: defaults[f"gbt_{n}"] for n in names} == {n: getattr(gbt, n) for n in names}
    assert defaults["model"] == MLP
    settings = Settings()
    assert defaults["data_path"] == str(settings.validated_data)
    assert defaults["model_base_path"] == str(settings.model_base_path)
    assert defaults["model_name"] == settings.model_name
    assert defaults["label_delay_days"] == settings.label_delay_days
    retrain = {f.name: f.default for f in fields(RetrainConfig)}
    assert retrain["model_base_path"] == settings.model_base_path
    assert retrain["model_name"] == settings.model_name


@pytest.mark.parametrize(
    "bad",
    [{"num_trees": 0}, {"max_depth": 0}, {"shrinkage": 0.0}, {"shrinkage": 1.5},
     {"min_examples": 0}, {"split_axis": "oblique"}],
)  # fmt: skip
def test_gbt_parameters_out_of_range_are_refused_with_the_rule(bad: dict) -> None:
    from components.train.gbt import GBTParams

    with pytest.raises(ValueError, match=r"split_axis one of AXIS_ALIGNED, SPARSE_OBLIQUE\)"):
        GBTParams(**bad)


@pytest.mark.parametrize("axis", SPLIT_AXES)
def test_the_trees_split_axis_reaches_tf_df_with_its_projection_options(axis: str) -> None:
    from components.train.gbt import OBLIQUE_OPTIONS, SPARSE_OBLIQUE, GBTParams, gbt_model

    passed = gbt_model(GBTParams(split_axis=axis)).learner_params
    assert passed["split_axis"] == axis
    oblique = {k: passed.get(k) for k in OBLIQUE_OPTIONS}
    assert oblique == (
        OBLIQUE_OPTIONS if axis == SPARSE_OBLIQUE else dict.fromkeys(OBLIQUE_OPTIONS)
    )
