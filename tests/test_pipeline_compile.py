"""The compiled IR YAML is checked in: it must load with kfp and match what the code compiles."""

from __future__ import annotations

import pytest
import yaml

from pipelines.runners import COMPILED_PATH, compile_pipeline


def test_compiled_pipeline_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "fresh.yaml")
    assert yaml.safe_load(fresh.read_text()) == yaml.safe_load(COMPILED_PATH.read_text()), (
        "pipelines/compiled/fraud_training.yaml is stale: run `fraud pipeline compile`"
    )


def test_compiled_pipeline_loads_with_kfp():
    from kfp import components

    pipeline = components.load_component_from_file(str(COMPILED_PATH))
    names = set(pipeline.component_spec.inputs)
    assert {"data_path", "train_start", "train_end", "model_base_path", "beam_args"} <= names
    spec = yaml.safe_load(COMPILED_PATH.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"ingest", "validate", "transform", "train", "evaluate", "push"}
    executors = spec["deploymentSpec"]["executors"].values()
    # Offline at run time: no component installs packages when it starts.
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors)


def test_in_process_runner_follows_the_ir():
    from components.kfp_components import STEPS
    from pipelines.in_process import pipeline_ir, plan
    from pipelines.pipeline import create_pipeline

    steps = {s.task: s for s in plan(pipeline_ir(create_pipeline()))}
    assert list(steps) == ["ingest", "validate", "transform", "train", "evaluate", "push"]
    assert {s.function for s in steps.values()} == {fn.__name__ for fn in STEPS}
    # What the IR binds, as read from the checked-in YAML on its own.
    tasks = yaml.safe_load(COMPILED_PATH.read_text())["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        inputs = task.get("inputs", {})
        assert steps[name].parameters == {
            k: v["componentInputParameter"] for k, v in inputs.get("parameters", {}).items()
        }
        assert steps[name].artifacts == {
            k: (
                v["taskOutputArtifact"]["producerTask"],
                v["taskOutputArtifact"]["outputArtifactKey"],
            )
            for k, v in inputs.get("artifacts", {}).items()
        }
    assert steps["push"].artifacts["train_data"] == ("ingest", "train_data")
    assert steps["train"].outputs == {"model": "system.Model", "metrics": "system.Metrics"}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t["push"].update(triggerPolicy={"condition": "x"}), r"'push'.*triggerPolicy"),
        (
            lambda t: t["train"]["inputs"]["parameters"].update(
                epochs={"runtimeValue": {"constant": 3}}
            ),
            r"'train': parameter epochs bound as .*runtimeValue",
        ),
        (
            lambda t: t["evaluate"]["inputs"]["artifacts"].update(
                model={"componentInputArtifact": "m"}
            ),
            r"'evaluate': artifact model bound as",
        ),
    ],
)
def test_in_process_runner_refuses_what_it_cannot_run(edit, match):
    from pipelines.in_process import pipeline_ir, plan
    from pipelines.pipeline import create_pipeline

    ir = pipeline_ir(create_pipeline())
    plan(ir)
    edit(ir["root"]["dag"]["tasks"])
    with pytest.raises(ValueError, match=match):
        plan(ir)


def test_in_process_arguments_are_the_pipeline_defaults_typed():
    from pipelines.in_process import arguments
    from pipelines.pipeline import create_pipeline

    pipeline = create_pipeline()
    values = arguments(pipeline, {"epochs": "3", "model_name": "m"})
    assert values["epochs"] == 3 and values["model_name"] == "m"
    assert values["batch_size"] == 512 and type(values["learning_rate"]) is float
    with pytest.raises(ValueError, match=r"run_steps epoch: unknown pipeline parameter"):
        arguments(pipeline, {"epoch": 3})


def test_run_steps_names_the_failing_task(tmp_path):
    from pipelines.runners import run_steps

    missing = tmp_path / "missing.parquet"
    params = {"data_path": str(missing), "train_start": "2025-01-01", "train_end": "2025-02-01"}
    with pytest.raises(Exception, match=r"missing\.parquet(.|\n)*pipeline task 'ingest'"):
        run_steps(params, tmp_path / "work")
