"""The compiled IR YAML is checked in: it must load with kfp and match what the code compiles."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml

from pipelines.runners import COMPILED_PATH, compile_pipeline


def compiled_docs(path=COMPILED_PATH) -> tuple[dict, dict]:
    """The pipeline spec and the platform spec of a compiled pipeline YAML."""
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


def test_compiled_pipeline_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "fresh.yaml")
    assert compiled_docs(fresh) == compiled_docs(), (
        "pipelines/compiled/fraud_training.yaml is stale: run `fraud pipeline compile`"
    )


def test_compiled_pipeline_mounts_the_data_and_models_claims():
    from pipelines.pipeline import DATA_MOUNT, DATA_PVC, MODELS_MOUNT, MODELS_PVC

    spec, platform = compiled_docs()
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {
        label: [(m["pvcNameParameter"]["componentInputParameter"], m["mountPath"]) for m in e]
        for label, e in ((k, v["pvcMount"]) for k, v in executors.items())
    }
    assert mounts == {
        "exec-ingest": [("data_pvc", DATA_MOUNT)],
        "exec-validate": [("models_pvc", MODELS_MOUNT)],
        "exec-evaluate": [("models_pvc", MODELS_MOUNT)],
        "exec-push": [("models_pvc", MODELS_MOUNT)],
    }
    # The claims are pipeline parameters, defaulting to the manifests' claims.
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["data_pvc"]["defaultValue"] == DATA_PVC == "fraud-data"
    assert inputs["models_pvc"]["defaultValue"] == MODELS_PVC == "fraud-models"


def test_ingest_gets_the_schedule_time_placeholder_once():
    from kfp import dsl

    spec, _ = compiled_docs()
    text = COMPILED_PATH.read_text()
    assert text.count(dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER) == 1
    binding = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]["schedule_time"]
    assert binding == {"runtimeValue": {"constant": dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER}}


def test_the_schedule_time_is_substituted_in_utc():
    from pipelines.run_time import PLACEHOLDER, bind_schedule_time

    east = timezone(timedelta(hours=2))
    text = bind_schedule_time(f"a: '{PLACEHOLDER}'", datetime(2026, 3, 1, 1, 30, tzinfo=east))
    assert text == "a: '2026-02-28T23:30:00Z'"
    assert PLACEHOLDER not in bind_schedule_time(COMPILED_PATH.read_text())
    with pytest.raises(ValueError, match="no time zone"):
        bind_schedule_time(PLACEHOLDER, datetime(2026, 3, 1))
    assert bind_schedule_time(PLACEHOLDER, datetime(2026, 3, 1, tzinfo=UTC)).endswith("Z")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"as_of": "2026-01-01", "train_days": 28, "eval_days": 7}, "as_of would fix"),
        ({"train_start": "2026-01-01", "train_end": "2026-02-01"}, "train_start, train_end"),
        ({"train_days": 28}, "train_days > 0 and eval_days > 0"),
    ],
)
def test_a_recurring_run_fixes_no_window(params, match):
    from pipelines.runners import check_recurring

    with pytest.raises(ValueError, match=match):
        check_recurring(params)
    check_recurring({"train_days": 28, "eval_days": 7})


def test_compiled_pipeline_loads_with_kfp():
    from kfp import components

    pipeline = components.load_component_from_file(str(COMPILED_PATH))
    names = set(pipeline.component_spec.inputs)
    assert {"data_path", "train_start", "train_end", "model_base_path", "beam_args"} <= names
    spec, _ = compiled_docs()
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
    tasks = compiled_docs()[0]["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        inputs = task.get("inputs", {})
        parameters = inputs.get("parameters", {})
        assert steps[name].parameters == {
            k: v["componentInputParameter"]
            for k, v in parameters.items()
            if "runtimeValue" not in v
        }
        assert steps[name].constants == {
            k: v["runtimeValue"]["constant"] for k, v in parameters.items() if "runtimeValue" in v
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
                epochs={
                    "taskOutputParameter": {"producerTask": "ingest", "outputParameterKey": "n"}
                }
            ),
            r"'train': parameter epochs bound as .*taskOutputParameter",
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


def test_fraud_pipeline_schedule_refuses_a_fixed_window(capsys):
    from app.cli import main

    argv = ["pipeline", "schedule", "--host", "http://kfp.invalid", "--cron", "0 30 2 * * *"]
    assert main([*argv, "--as-of", "2026-01-01", "--train-days", "28", "--eval-days", "7"]) == 2
    assert "as_of would fix the window of every recurring run" in capsys.readouterr().err


def test_ir_runner_reads_the_compiled_yaml_as_the_launcher_would(tmp_path):
    from pipelines.ir_runner import (
        Artifact,
        Engine,
        arguments,
        claim_mounts,
        container_command,
        executor_input,
        load,
        order,
        task_parameters,
    )

    when = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)
    spec, platform = load(COMPILED_PATH, when)
    assert order(spec) == ["ingest", "validate", "transform", "train", "evaluate", "push"]
    values = arguments(spec, {"epochs": "3", "data_path": "/data/t.parquet"})
    assert values["epochs"] == 3 and values["batch_size"] == 512 and values["dropout"] == 0.1
    with pytest.raises(ValueError, match=r"unknown pipeline parameter\(s\) \['epoch'\]"):
        arguments(spec, {"epoch": 3})
    ingest = task_parameters("ingest", spec["root"]["dag"]["tasks"]["ingest"], values)
    assert ingest["schedule_time"] == "2026-12-06T02:30:00Z"
    assert ingest["data_path"] == "/data/t.parquet"
    volumes = {"fraud-data": tmp_path / "d", "fraud-models": tmp_path / "m"}
    assert claim_mounts(platform, "exec-push", values, volumes) == [(tmp_path / "m", "/models")]
    with pytest.raises(ValueError, match=r"exec-ingest: mounts claim 'other' at /data"):
        claim_mounts(platform, "exec-ingest", {**values, "data_pvc": "other"}, volumes)
    container = spec["deploymentSpec"]["executors"]["exec-push"]["container"]
    model = Artifact("model", "system.Model", tmp_path / "train" / "model", "/kfp/train/model")
    executor = executor_input({"model_name": "fraud"}, {"model": model}, {}, "/kfp/push/out.json")
    binds = [(model.host, model.uri, True)]
    argv = container_command(Engine("podman"), "img", container, executor, binds)
    assert argv[argv.index("img") - 1] == "--entrypoint=sh"
    assert "--read-only" in argv and "--network=none" in argv
    assert [a for a in argv if a.startswith("--volume")] == [
        f"--volume={model.host}:/kfp/train/model:ro"
    ]
    passed = json.loads(argv[argv.index("--executor_input") + 1])
    assert passed["inputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == "/kfp/train/model"
