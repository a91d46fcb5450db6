"""Thin runners around create_pipeline(): local (kfp.local), compile, submit, schedule.

Every local runner runs the compiled IR with the run's time in place of the schedule-time
placeholder (pipelines/run_time.py); a run on Kubeflow Pipelines gets its own schedule time.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path

from pipelines.pipeline import PIPELINE_NAME, create_pipeline
from pipelines.run_time import bind_schedule_time

COMPILED_PATH = Path(__file__).resolve().parent / "compiled" / "fraud_training.yaml"
# Parameters that name local files: made absolute for the component subprocesses.
PATH_PARAMS = ("data_path", "model_base_path", "schema_path")


def _absolute_paths(params: dict) -> dict:
    out = dict(params)
    for key in PATH_PARAMS:
        value = out.get(key)
        if value and "://" not in str(value):
            out[key] = str(Path(value).resolve())
    return out


def run_local(params: dict, pipeline_root: str | Path, run_time: datetime | None = None) -> dict:
    """Run the real pipeline on this machine: each component in a subprocess, no network.

    What runs is the compiled IR (``<pipeline_root>/fraud_training.yaml``) with ``run_time``
    (default: now, UTC) as the run's schedule time. The volume mounts of its platform spec do
    not apply here: paths are this machine's. Returns the push step's result
    ({"pushed": bool, "version": ..., ...}).
    """
    from kfp import components, local

    params = _absolute_paths(params)
    if not str(params.get("model_base_path", "")).strip():
        raise ValueError("model_base_path is empty: nowhere to push the model")
    if not Path(params["data_path"]).exists():
        raise FileNotFoundError(f"{params['data_path']}: no such data file (run `dvc repro`?)")
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # The components run `python3 -m kfp.dsl.executor_main`: put this interpreter first on PATH
    # so they run in the same environment, with the project importable.
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    compiled = compile_pipeline(pipeline_root / COMPILED_PATH.name)
    pipeline = components.load_component_from_text(
        bind_schedule_time(compiled.read_text(), run_time)
    )
    with warnings.catch_warnings():
        # kfp.local warns that the components name a container image; here they run in this
        # very environment on purpose (the image is built from the same lock file).
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        task = pipeline(**params)
    return _push_result(getattr(task.output, "path", None), pipeline_root)


def _push_result(path: str | Path | None, where: str | Path) -> dict:
    """The pipeline's output: what the push task wrote."""
    if path is None or not Path(path).exists():
        raise RuntimeError(f"pipeline finished without a push result under {where}")
    return json.loads(Path(path).read_text())


def compile_pipeline(output: str | Path = COMPILED_PATH, image: str | None = None) -> Path:
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(create_pipeline(image), str(output), pipeline_name=PIPELINE_NAME)
    return output


def kfp_client(host: str, namespace: str | None = None):
    """A ``kfp.Client`` for the KFP API at ``host``."""
    import kfp

    return kfp.Client(host=host, namespace=namespace)


def submit(client, params: dict, experiment: str, package: str | Path = COMPILED_PATH) -> str:
    """Start one run of the compiled pipeline through ``client`` (a ``kfp.Client``): its run id."""
    run = client.create_run_from_pipeline_package(
        str(package), arguments=params, experiment_name=experiment, run_name=f"{PIPELINE_NAME}"
    )
    return run.run_id


def schedule(
    client,
    cron: str,
    params: dict,
    experiment: str,
    job_name: str = f"{PIPELINE_NAME}-scheduled",
    package: str | Path = COMPILED_PATH,
) -> str:
    """A KFP recurring run through ``client`` (a ``kfp.Client``): scheduled retraining.

    Each run trains on the relative windows (``train_days``, ``eval_days``) that end at its own
    schedule time, so ``params`` must fix no window: an ``as_of`` or a date is an error.
    """
    check_recurring(params)
    exp = client.create_experiment(experiment)
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        cron_expression=cron,
        pipeline_package_path=str(package),
        params=params,
        max_concurrency=1,
        no_catchup=True,
    )
    return job.recurring_run_id


def check_recurring(params: dict) -> None:
    """Refuse parameters that would make every recurring run train on the same window."""
    fixed = [
        k for k in ("as_of", "train_start", "train_end", "eval_start", "eval_end") if params.get(k)
    ]
    if fixed:
        raise ValueError(
            f"schedule: {', '.join(fixed)} would fix the window of every recurring run; "
            "give train_days and eval_days: each run's windows end at its schedule time"
        )
    if not (params.get("train_days", 0) > 0 and params.get("eval_days", 0) > 0):
        raise ValueError("schedule: give train_days > 0 and eval_days > 0 (relative windows)")


def run_steps(params: dict, work_dir: str | Path, run_time: datetime | None = None) -> dict:
    """The pipeline's tasks in this process, in the order and with the bindings of its IR.

    Same component functions, same artifacts on disk (``<work_dir>/<task>/<output>``); what it
    skips is KFP's per-step subprocess (and TensorFlow import). For tests and quick local
    iterations; ``run_local`` is the pipeline as Kubeflow runs it. ``run_time`` (default: now)
    is the run's schedule time. Returns the push result.
    """
    from pipelines.in_process import run

    output = run(create_pipeline(), _absolute_paths(params), work_dir, run_time)
    return _push_result(output, work_dir)
