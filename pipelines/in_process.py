"""The pipeline run in this process, as its IR says: no KFP executor, no per-step subprocess.

Tasks, their order, and what each receives (pipeline parameters, other tasks' output artifacts)
are read from ``create_pipeline().pipeline_spec``, the IR Kubeflow runs; each task calls the very
component function its executor would (``--function_to_execute``), with KFP artifact objects
under ``<work_dir>/<task>/<output>``, the layout kfp.local uses. Constant task inputs are
passed as the IR holds them, with the run's time in place of the schedule-time placeholder. An
IR feature this runner cannot honour (a condition, a loop, an output parameter) is an error that
names it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from kfp import dsl

from components.kfp_components import STEPS
from pipelines.params import typed_params
from pipelines.run_time import bind_schedule_time

ARTIFACT_TYPES = {
    cls.schema_title: cls
    for cls in (
        dsl.Artifact,
        dsl.Dataset,
        dsl.Model,
        dsl.Metrics,
        dsl.ClassificationMetrics,
        dsl.SlicedClassificationMetrics,
        dsl.HTML,
        dsl.Markdown,
    )
}
# The parts of an IR task this runner follows; anything else (triggerPolicy, iteratorPolicy,
# retryPolicy, ...) changes what the task means, so it is refused rather than ignored.
TASK_KEYS = {"componentRef", "dependentTasks", "inputs", "taskInfo", "cachingOptions"}


@dataclass(frozen=True)
class Step:
    """One IR task as this runner executes it."""

    task: str
    function: str  # the component function the task's executor calls
    parameters: Mapping[str, str]  # component input -> pipeline parameter
    constants: Mapping[str, Any]  # component input -> its constant value
    artifacts: Mapping[str, tuple[str, str]]  # component input -> (producer task, output key)
    outputs: Mapping[str, str]  # output artifact -> its schema title


def pipeline_ir(pipeline) -> dict:
    """The pipeline's IR as plain data, keyed as in the compiled YAML."""
    return json_format.MessageToDict(pipeline.pipeline_spec)


def plan(ir: Mapping) -> list[Step]:
    """The root DAG's tasks in dependency order (ties broken by name, so the order is stable)."""
    tasks = ir["root"]["dag"]["tasks"]
    graph = {name: sorted(tasks[name].get("dependentTasks", [])) for name in sorted(tasks)}
    return [_step(ir, name, tasks[name]) for name in TopologicalSorter(graph).static_order()]


def _step(ir: Mapping, name: str, task: Mapping) -> Step:
    where = f"pipeline task {name!r}"
    if extra := set(task) - TASK_KEYS:
        raise ValueError(f"{where}: {sorted(extra)} cannot run in process")
    component = ir["components"][task["componentRef"]["name"]]
    args = ir["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["args"]
    if "--function_to_execute" not in args:
        raise ValueError(f"{where}: its executor runs no Python component function ({args})")
    inputs = task.get("inputs", {})
    if extra := set(inputs) - {"parameters", "artifacts"}:
        raise ValueError(f"{where}: inputs {sorted(extra)} cannot run in process")
    parameters, constants, artifacts = {}, {}, {}
    for key, binding in inputs.get("parameters", {}).items():
        if "componentInputParameter" in binding:
            parameters[key] = binding["componentInputParameter"]
        elif "constant" in binding.get("runtimeValue", {}):
            constants[key] = binding["runtimeValue"]["constant"]
        else:
            raise ValueError(
                f"{where}: parameter {key} bound as {binding}, not to a pipeline input"
            )
    for key, binding in inputs.get("artifacts", {}).items():
        if "taskOutputArtifact" not in binding:
            raise ValueError(f"{where}: artifact {key} bound as {binding}, not to a task output")
        source = binding["taskOutputArtifact"]
        artifacts[key] = (source["producerTask"], source["outputArtifactKey"])
    outputs = component.get("outputDefinitions", {})
    if outputs.get("parameters"):
        raise ValueError(f"{where}: output parameters cannot run in process")
    titles = {k: d["artifactType"]["schemaTitle"] for k, d in outputs.get("artifacts", {}).items()}
    if unknown := {k: t for k, t in titles.items() if t not in ARTIFACT_TYPES}:
        raise ValueError(f"{where}: outputs of unknown artifact types {unknown}")
    return Step(
        task=name,
        function=args[args.index("--function_to_execute") + 1],
        parameters=parameters,
        constants=constants,
        artifacts=artifacts,
        outputs=titles,
    )


def arguments(pipeline, params: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's defaults overridden by ``params`` (typed; an unknown name is an error)."""
    inputs = pipeline.component_spec.inputs or {}
    values = {name: spec.default for name, spec in inputs.items() if spec.optional}
    values.update(typed_params(params, "run_steps"))
    if missing := sorted(set(inputs) - set(values)):
        raise ValueError(f"run_steps: pipeline parameter(s) {missing} have no value")
    return values


def run(
    pipeline, params: Mapping[str, Any], work_dir: str | Path, run_time: datetime | None = None
) -> Path:
    """Every task of ``pipeline`` in this process, ``run_time`` (default: now) as the run's
    schedule time; the path of the pipeline's output artifact."""
    ir = json.loads(bind_schedule_time(json.dumps(pipeline_ir(pipeline)), run_time))
    functions: dict[str, Callable] = {fn.__name__: fn for fn in STEPS}
    values = arguments(pipeline, params)
    work = Path(work_dir).resolve()
    produced: dict[tuple[str, str], dsl.Artifact] = {}
    steps = plan(ir)
    if unknown := sorted({s.function for s in steps} - set(functions)):
        raise ValueError(f"run_steps: no component function {unknown} in {sorted(functions)}")
    for step in steps:
        kwargs: dict[str, Any] = {key: values[name] for key, name in step.parameters.items()}
        kwargs.update(step.constants)
        kwargs.update({key: produced[source] for key, source in step.artifacts.items()})
        (work / step.task).mkdir(parents=True, exist_ok=True)
        for key, title in step.outputs.items():
            artifact = ARTIFACT_TYPES[title](name=key, uri=str(work / step.task / key), metadata={})
            kwargs[key] = produced[(step.task, key)] = artifact
        try:
            functions[step.function](**kwargs)
        except Exception as err:
            err.add_note(f"in pipeline task {step.task!r} (run in process under {work})")
            raise
    (selector,) = ir["root"]["dag"]["outputs"]["artifacts"]["Output"]["artifactSelectors"]
    return Path(produced[(selector["producerSubtask"], selector["outputArtifactKey"])].path)
