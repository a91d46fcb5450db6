"""The one parser of NAME=VALUE pipeline parameters (fraud pipeline --set, fraud retrain --set,
fraud stream consume --retrain-set)."""

from __future__ import annotations

import pytest

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
