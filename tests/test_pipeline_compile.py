"""The compiled IR YAML is checked in: it must load with kfp and match what the code compiles."""

from __future__ import annotations

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
