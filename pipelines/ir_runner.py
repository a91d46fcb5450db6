"""A compiled pipeline (the IR YAML) run the way a Kubeflow cluster runs it, with a container
engine (Podman or Docker) in place of the cluster.

Each task of the root DAG runs, in dependency order, in a container of the image its executor
names, with the executor's command and arguments (``{{$}}`` becomes the task's ExecutorInput
JSON, as the KFP launcher writes it). Nothing of this machine is visible to it but what a pod of
the task would see:

* its output directory (``/kfp/<task>/``), writable, where its ExecutorOutput file goes too;
* each input artifact (``/kfp/<producer>/<output>``), read-only;
* the PersistentVolumeClaims its platform spec mounts (``kfp.kubernetes.mount_pvc``), each
  claim given as a directory of this machine in ``volumes``;
* a tmpfs at /tmp; the root filesystem is read-only, the network is off, no capabilities.

Parameters come from the pipeline's inputs (its defaults overridden by ``params``) and the
tasks' constants, with the run's time in place of the schedule-time placeholder
(pipelines/run_time.py); artifacts carry the metadata their producer wrote into its
ExecutorOutput. An IR feature this runner does not follow (an importer, a condition, an output
parameter, another placeholder) is an error that names it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

from pipelines.run_time import bind_schedule_time

ARTIFACT_ROOT = "/kfp"
EXECUTOR_INPUT = "{{$}}"
CASTS = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}
# The parts of a task this runner follows (the rest would change what the task means).
TASK_KEYS = {"componentRef", "dependentTasks", "inputs", "taskInfo", "cachingOptions"}


@dataclass(frozen=True)
class Engine:
    """A container engine's CLI (``podman`` or ``docker``) and the environment it runs with."""

    command: str = "podman"
    env: Mapping[str, str] | None = field(default=None, repr=False)
    timeout_s: float = 3600


@dataclass
class Artifact:
    """A produced artifact: where it is on this machine and in the containers, its metadata."""

    name: str
    schema_title: str
    host: Path
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def runtime(self) -> dict[str, Any]:
        """As an ExecutorInput's RuntimeArtifact."""
        return {
            "name": self.name,
            "type": {"schemaTitle": self.schema_title},
            "uri": self.uri,
            "metadata": self.metadata,
        }


def load(package: str | Path, run_time: datetime | None = None) -> tuple[dict, dict]:
    """The pipeline spec and platform spec of a compiled YAML, ``run_time`` as schedule time."""
    docs = list(yaml.safe_load_all(bind_schedule_time(Path(package).read_text(), run_time)))
    if not docs or "root" not in docs[0]:
        raise ValueError(f"{package}: not a compiled pipeline (no root DAG)")
    return docs[0], docs[1] if len(docs) > 1 else {}


def arguments(spec: Mapping, params: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's defaults overridden by ``params``, cast to the types the IR declares."""
    inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    if unknown := sorted(set(params) - set(inputs)):
        raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(inputs)}")
    values = {k: d["defaultValue"] for k, d in inputs.items() if "defaultValue" in d}
    values.update(params)
    if missing := sorted(set(inputs) - set(values)):
        raise ValueError(f"pipeline parameter(s) {missing} have no value")
    out = {}
    for key, value in values.items():
        cast = CASTS.get(inputs[key]["parameterType"])
        try:
            out[key] = cast(value) if cast else value
        except (TypeError, ValueError) as err:
            raise ValueError(f"pipeline parameter {key}={value!r}: {err}") from err
    return out


def order(spec: Mapping) -> list[str]:
    """The root DAG's tasks in dependency order (ties by name, so the order is stable)."""
    tasks = spec["root"]["dag"]["tasks"]
    graph = {name: sorted(tasks[name].get("dependentTasks", [])) for name in sorted(tasks)}
    return list(TopologicalSorter(graph).static_order())


def task_parameters(name: str, task: Mapping, values: Mapping[str, Any]) -> dict[str, Any]:
    """What each parameter input of the task resolves to."""
    out = {}
    for key, binding in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in binding:
            out[key] = values[binding["componentInputParameter"]]
        elif "constant" in binding.get("runtimeValue", {}):
            out[key] = binding["runtimeValue"]["constant"]
        else:
            raise ValueError(f"task {name!r}: parameter {key} bound as {binding}: not supported")
    return out


def task_artifacts(
    name: str, task: Mapping, produced: Mapping[tuple[str, str], Artifact]
) -> dict[str, Artifact]:
    """The upstream artifacts each artifact input of the task receives."""
    out = {}
    for key, binding in task.get("inputs", {}).get("artifacts", {}).items():
        source = binding.get("taskOutputArtifact")
        if source is None:
            raise ValueError(f"task {name!r}: artifact {key} bound as {binding}: not supported")
        out[key] = produced[(source["producerTask"], source["outputArtifactKey"])]
    return out


def claim_mounts(
    platform: Mapping, label: str, values: Mapping[str, Any], volumes: Mapping[str, Path]
) -> list[tuple[Path, str]]:
    """(directory of this machine, mount path) of each PVC the executor's platform spec
    mounts; ``volumes`` maps claim names to directories."""
    executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    out = []
    for mount in executors.get("executors", {}).get(label, {}).get("pvcMount", []):
        ref = mount.get("pvcNameParameter", {})
        if "componentInputParameter" in ref:
            claim = values[ref["componentInputParameter"]]
        elif "constant" in ref.get("runtimeValue", {}):
            claim = ref["runtimeValue"]["constant"]
        else:
            claim = mount.get("constant")
        if claim not in volumes:
            raise ValueError(
                f"{label}: mounts claim {claim!r} at {mount['mountPath']}, "
                f"which is not among the volumes given ({sorted(volumes)})"
            )
        out.append((Path(volumes[claim]), mount["mountPath"]))
    return out


def executor_input(
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Artifact],
    outputs: Mapping[str, Artifact],
    output_file: str,
) -> dict[str, Any]:
    """The task's ExecutorInput (kfp-pipeline-spec's message, as JSON)."""
    return {
        "inputs": {
            "parameterValues": dict(parameters),
            "artifacts": {k: {"artifacts": [a.runtime()]} for k, a in inputs.items()},
        },
        "outputs": {
            "artifacts": {k: {"artifacts": [a.runtime()]} for k, a in outputs.items()},
            "outputFile": output_file,
        },
    }


def container_command(
    engine: Engine,
    image: str,
    container: Mapping,
    executor: Mapping[str, Any],
    binds: Sequence[tuple[Path, str, bool]],
) -> list[str]:
    """The engine's ``run`` command line for one task: Kubernetes semantics, the spec's command
    in place of the image's entrypoint and its args in place of the image's command."""
    text = json.dumps(executor)
    argv = [*container.get("command", []), *container.get("args", [])]
    argv = [text if a == EXECUTOR_INPUT else a for a in argv]
    if leftover := [a for a in argv if a != text and "{{$" in a]:
        raise ValueError(f"placeholders this runner does not resolve: {leftover}")
    entrypoint, *rest = argv
    volumes = [f"--volume={host}:{target}{':ro' if ro else ''}" for host, target, ro in binds]
    return [
        engine.command,
        "run",
        "--rm",
        "--pull=never",
        "--read-only",
        "--tmpfs=/tmp",
        "--network=none",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        *volumes,
        f"--entrypoint={entrypoint}",
        image,
        *rest,
    ]


def _check_task(name: str, task: Mapping, executor: Mapping) -> Mapping:
    if extra := set(task) - TASK_KEYS:
        raise ValueError(f"task {name!r}: {sorted(extra)} not supported")
    if "container" not in executor:
        raise ValueError(f"task {name!r}: executor {sorted(executor)} is not a container")
    return executor["container"]


def run_compiled(
    package: str | Path,
    params: Mapping[str, Any],
    work_dir: str | Path,
    volumes: Mapping[str, str | Path],
    engine: Engine | None = None,
    run_time: datetime | None = None,
) -> Path:
    """Every task of the compiled pipeline ``package`` in its own container; the path (on this
    machine) of the pipeline's output artifact. Task outputs go to ``<work_dir>/<task>/``, each
    task's log to ``<work_dir>/<task>.log``; a failed task raises, naming it, with its log's end.
    """
    engine = engine or Engine()
    spec, platform = load(package, run_time)
    values = arguments(spec, params)
    work = Path(work_dir).resolve()
    volumes = {claim: Path(path).resolve() for claim, path in volumes.items()}
    produced: dict[tuple[str, str], Artifact] = {}
    tasks = spec["root"]["dag"]["tasks"]
    for name in order(spec):
        task = tasks[name]
        component = spec["components"][task["componentRef"]["name"]]
        label = component["executorLabel"]
        container = _check_task(name, task, spec["deploymentSpec"]["executors"][label])
        if component.get("outputDefinitions", {}).get("parameters"):
            raise ValueError(f"task {name!r}: output parameters not supported")
        out_dir = work / name
        out_dir.mkdir(parents=True, exist_ok=True)
        # The task runs as the image's (non-root) user, whatever owns this directory.
        out_dir.chmod(0o777)
        target = f"{ARTIFACT_ROOT}/{name}"
        outputs = {
            key: Artifact(key, d["artifactType"]["schemaTitle"], out_dir / key, f"{target}/{key}")
            for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()
        }
        inputs = task_artifacts(name, task, produced)
        binds = [(out_dir, target, False)]
        binds += [(a.host, a.uri, True) for a in inputs.values()]
        binds += [
            (host, path, False) for host, path in claim_mounts(platform, label, values, volumes)
        ]
        executor = executor_input(
            task_parameters(name, task, values), inputs, outputs, f"{target}/executor_output.json"
        )
        argv = container_command(engine, container["image"], container, executor, binds)
        _run_task(name, argv, engine, work / f"{name}.log")
        _read_metadata(out_dir / "executor_output.json", outputs)
        produced.update({(name, key): artifact for key, artifact in outputs.items()})
    (selector,) = spec["root"]["dag"]["outputs"]["artifacts"]["Output"]["artifactSelectors"]
    return produced[(selector["producerSubtask"], selector["outputArtifactKey"])].host


def _run_task(name: str, argv: list[str], engine: Engine, log_path: Path) -> None:
    with log_path.open("w") as log:
        done = subprocess.run(
            argv, env=engine.env, stdout=log, stderr=subprocess.STDOUT, timeout=engine.timeout_s
        )
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(
            f"pipeline task {name!r} exited {done.returncode} (log {log_path}):\n{tail}"
        )


def _read_metadata(output_file: Path, outputs: Mapping[str, Artifact]) -> None:
    """Each output artifact's metadata from the task's ExecutorOutput, as the launcher records
    it for the tasks downstream."""
    if not output_file.exists():
        return
    written = json.loads(output_file.read_text()).get("artifacts", {})
    for key, artifact in outputs.items():
        for runtime in written.get(key, {}).get("artifacts", []):
            artifact.metadata.update(runtime.get("metadata", {}))
