"""The platform image for real: built once per session (``platform_image``), then run.

* ``fraud --help`` runs from the image, with nothing mounted;
* one pipeline step (ingest) runs in the image exactly as the compiled component spec says: the
  spec's command and arguments in place of the image's entrypoint and command, no repository
  mount, its input and outputs where an executor input puts them;
* the test stack (k8s/compose/test-stack.yaml) comes up service by service: a seeded dataset,
  the training pipeline pushing version 1 into the models volume, the broker (Tansu), the topics,
  the model server (the embedded one, in place of tensorflow/serving) and the consumer. Their
  health checks turn healthy; the replay publishes; the consumer container is killed mid-stream
  and started again; every replayed transaction gets a decision, with at most one batch of
  duplicates (docs/streaming.md); the consumer's and the model server's metrics endpoints
  scrape; every container runs as UID 10001 with a read-only root filesystem, and writes only
  where the Kubernetes manifests mount a writable volume.

What the stack produced is read by tests/stack_probe.py, run in a container of the image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from image_fixtures import REPO, Containers

from core import contract as c
from core.dataio import write_transactions
from core.simulator import SimulationConfig, simulate
from streaming.metrics import CONSUMED, DECISIONS

pytestmark = pytest.mark.slow

STACK_FILE = REPO / "k8s" / "compose" / "test-stack.yaml"
PROBE = (Path(__file__).parent / "stack_probe.py").read_text()
COMPILED = REPO / "pipelines" / "compiled" / "fraud_training.yaml"
# The test stack's services that have a Kubernetes counterpart: (manifest, workload name).
K8S_COUNTERPARTS = {
    "consumer": ("consumer/deployment.yaml", "fraud-consumer"),
    "serving": ("serving/deployment.yaml", "fraud-serving"),
    "pipeline": ("retrain/cronjob.yaml", "fraud-retrain"),
}
# Directories of the image, some owned by the image's user (the volumes' mount points): a process
# writes only to those that a writable volume or tmpfs covers, the root filesystem is read-only.
IMAGE_DIRS = ("/", "/app", "/opt/venv", "/etc", "/var/lib", "/var/lib/fraud", "/models", "/data")
UID = 10001
# Credentials of the Kubernetes and KFP APIs, projected by the kubelet: a compose stack has
# neither API, so only the manifests mount them.
CLUSTER_CREDENTIALS = ("/var/run/secrets/kubernetes.io/", "/var/run/secrets/kubeflow/")
DECISIONS_METRIC = f"{DECISIONS}_total"
CONSUMED_METRIC = f"{CONSUMED}_total"


# --- the image alone ---------------------------------------------------------------------------


def test_fraud_help_runs_from_the_image(platform_image: Containers) -> None:
    done = platform_image.run("run", "--rm", "--read-only", platform_image.image, "--help")
    assert done.stdout.startswith("usage: fraud"), done.stdout
    for command in ("pipeline", "stream", "serve", "broker", "retrain"):
        assert command in done.stdout


def executor_input(component: dict, parameters: dict[str, Any], out_dir: str) -> dict:
    """KFP's ExecutorInput for ``component`` (its IR spec): ``parameters``, and every output
    artifact at ``out_dir/<name>``, as the KFP launcher writes it."""
    outputs = component["outputDefinitions"]["artifacts"]
    assert set(parameters) == set(component["inputDefinitions"]["parameters"])
    return {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "artifacts": {
                name: {
                    "artifacts": [
                        {
                            "name": name,
                            "type": {"schemaTitle": spec["artifactType"]["schemaTitle"]},
                            "uri": f"{out_dir}/{name}",
                            "metadata": {},
                        }
                    ]
                }
                for name, spec in outputs.items()
            },
            "outputFile": f"{out_dir}/executor_output.json",
        },
    }


def test_a_pipeline_step_runs_as_its_compiled_spec_says(
    platform_image: Containers, tmp_path: Path
) -> None:
    spec, _platform = yaml.safe_load_all(COMPILED.read_text())
    component = spec["components"]["comp-ingest"]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    out.chmod(0o777)  # the step runs as UID 10001
    frame = simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=60, seed=3))
    write_transactions(frame, data / "transactions.parquet")
    parameters = {
        "data_path": "/data/transactions.parquet",
        "train_start": "2025-01-01",
        "train_end": "2025-02-21",
        "eval_start": "",
        "eval_end": "",
        "as_of": "",
        "train_days": 0,
        "eval_days": 0,
        "label_delay_days": c.DEFAULT_LABEL_DELAY_DAYS,
        "schedule_time": "2025-02-21T00:00:00Z",
    }
    executor = json.dumps(executor_input(component, parameters, "/out"))
    # Kubernetes semantics: the spec's command replaces the entrypoint, its args the command.
    entrypoint, *command = container["command"]
    args = [executor if a == "{{$}}" else a for a in container["args"]]
    platform_image.run(
        "run",
        "--rm",
        "--read-only",
        "--tmpfs=/tmp",
        f"--volume={data}:/data:ro",
        f"--volume={out}:/out",
        f"--entrypoint={entrypoint}",
        platform_image.image,
        *command,
        *args,
        timeout_s=900,
    )
    result = json.loads((out / "executor_output.json").read_text())
    counts = result["artifacts"]["counts"]["artifacts"][0]["metadata"]
    assert counts["train_rows"] > 0 and counts["eval_rows"] > 0, counts
    for name in ("train_data", "eval_data"):
        assert (out / name).stat().st_size > 0, name


# --- the stack ---------------------------------------------------------------------------------


def stack_services() -> dict[str, dict]:
    return yaml.safe_load(STACK_FILE.read_text())["services"]


def compose_mounts(service: dict) -> set[tuple[str, bool]]:
    """(target, read-only) of every volume and tmpfs of a compose service (short syntax)."""
    mounts = {(path, False) for path in service.get("tmpfs", [])}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        mounts.add((parts[1], parts[2:] == ["ro"]))
    return mounts


def k8s_mounts(manifest: str, workload: str) -> set[tuple[str, bool]]:
    """(mountPath, readOnly) of the workload's container in k8s/base, API credentials left out."""
    docs = yaml.safe_load_all((REPO / "k8s" / "base" / manifest).read_text())
    (doc,) = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "CronJob") and d["metadata"]["name"] == workload
    ]
    pod = doc["spec"]["template"]["spec"] if doc["kind"] != "CronJob" else None
    if pod is None:
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {
        (m["mountPath"], bool(m.get("readOnly", False)))
        for m in container["volumeMounts"]
        if not (m["mountPath"] + "/").startswith(CLUSTER_CREDENTIALS)
    }


def test_stack_services_mount_what_the_manifests_mount() -> None:
    services = stack_services()
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert ("/tmp", False) in compose_mounts(service), name
    for name, (manifest, workload) in K8S_COUNTERPARTS.items():
        assert compose_mounts(services[name]) == k8s_mounts(manifest, workload), name


class Stack:
    """The test stack under a project name of its own; ``down`` removes all of it."""

    def __init__(self, containers: Containers, project: str) -> None:
        self.containers = containers
        self.project = project

    def name(self, service: str) -> str:
        return self.containers.container(self.project, service)

    def up(self, service: str) -> str:
        self.containers.compose(STACK_FILE, self.project, "up", "-d", service)
        return self.name(service)

    def run_to_completion(self, service: str, timeout_s: float) -> str:
        """Start a one-shot service and wait for it to exit 0; its logs."""
        name = self.up(service)
        code = self.containers.wait_exit(name, timeout_s)
        logs = self.containers.logs(name, tail=200)
        assert code == 0, f"{service} exited {code}:\n{logs}"
        return logs

    def probe(self, *args: str, container: str | None = None) -> Any:
        """tests/stack_probe.py with ``args``: in ``container``, or in a new one on the stack's
        network with the data volume."""
        if container is not None:
            done = self.containers.run("exec", "-i", container, "python", "-", *args, stdin=PROBE)
        else:
            done = self.containers.run(
                "run",
                "--rm",
                "-i",
                "--read-only",
                f"--network={self.project}_default",
                f"--volume={self.project}_data:/data:ro",
                "--entrypoint=python",
                self.containers.image,
                "-",
                *args,
                stdin=PROBE,
            )
        return json.loads(done.stdout.strip().splitlines()[-1])

    def down(self) -> None:
        self.containers.compose(STACK_FILE, self.project, "down", "-v", check=False)
        self.containers.run("network", "rm", "-f", f"{self.project}_default", check=False)


def service_command(name: str) -> list[str]:
    return stack_services()[name]["command"]


def option(name: str, flag: str) -> str:
    """The value of ``--flag=value`` in a service's command."""
    return next(a.split("=", 1)[1] for a in service_command(name) if a.startswith(f"{flag}="))


def timed(timings: dict[str, float], what: str, step: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.monotonic()
    try:
        return step(*args, **kwargs)
    finally:
        timings[what] = time.monotonic() - started


@pytest.fixture(scope="module")
def stack(platform_image: Containers) -> Iterator[Stack]:
    """The stack up to a healthy consumer, with a model the pipeline pushed; timings printed."""
    stack = Stack(platform_image, f"fraudstack{os.getpid()}")
    timings: dict[str, float] = {}
    try:
        timed(timings, "data", stack.run_to_completion, "data", timeout_s=300)
        logs = timed(timings, "pipeline", stack.run_to_completion, "pipeline", timeout_s=1800)
        assert "model pushed: version 1" in logs, logs
        for service in ("broker", "topics", "serving", "consumer"):
            if service == "topics":
                timed(timings, service, stack.run_to_completion, service, timeout_s=120)
            else:
                name = stack.up(service)
                timed(timings, service, platform_image.wait_healthy, name, timeout_s=300)
        print("\nstack up: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        yield stack
    finally:
        stack.down()


def decided(stack: Stack) -> dict[str, int]:
    return stack.probe("decisions", "broker:9092", "/data/raw/transactions.parquet")


def consumer_count(stack: Stack, sample: str) -> float:
    """A counter of the running consumer's own metrics endpoint (cheaper than reading the
    topics: polled while waiting for the moment to kill it)."""
    port = option("consumer", "--metrics-port")
    sums = stack.probe(
        "metrics", f"http://127.0.0.1:{port}/metrics", container=stack.name("consumer")
    )
    return sum(v for k, v in sums.items() if k.startswith(sample))


@pytest.fixture(scope="module")
def replayed(stack: Stack) -> dict[str, Any]:
    """Replays, kills the consumer container mid-stream, starts it again; what was decided."""
    containers = stack.containers
    consumer = stack.name("consumer")
    limit = int(option("replay", "--limit"))
    killed_at = consumed = 0
    started = time.monotonic()
    polled: list[tuple[float, float]] = []
    # Killed as soon as it has read transactions, decided or not: its first batch can wait for
    # the model server for tens of seconds, as the container engine's DNS drops the queries
    # sent while a container (the replay) joins the network, and the name lookup is retried.
    # The compose CLI can take a while to return once the container runs: polled meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(stack.up, "replay")
        while not killed_at and time.monotonic() < started + 300:
            consumed = consumer_count(stack, CONSUMED_METRIC)
            polled.append((round(time.monotonic() - started, 1), consumed))
            if consumed > 0:
                assert consumed < limit, f"the replay ended before the kill, (s, read): {polled}"
                containers.run("kill", "--signal=KILL", consumer)
                killed_at = consumed
            time.sleep(0.5)
        replay = starting.result()
    assert killed_at, f"the consumer read nothing to be killed mid-stream: (s, read) {polled}"
    replay_code = containers.wait_exit(replay, timeout_s=300)
    replay_logs = containers.logs(replay)
    assert replay_code == 0, replay_logs
    containers.run("start", consumer)
    containers.wait_healthy(consumer, timeout_s=300)
    deadline = time.monotonic() + 300
    summary = decided(stack)
    while summary["distinct"] < limit and time.monotonic() < deadline:
        time.sleep(2)
        summary = decided(stack)
    print(f"\nconsumer killed having read {killed_at} of {limit}; then {summary}")
    if summary["distinct"] < limit:
        counts = stack.probe(
            "metrics",
            f"http://127.0.0.1:{option('consumer', '--metrics-port')}/metrics",
            container=consumer,
        )
        wanted = ("decision", "repeat", "dead", "replayed", "consumed", "rebalanc", "commit")
        print("consumer counts:", {k: v for k, v in counts.items() if any(w in k for w in wanted)})
        print(
            "consumer log (tail):\n" + "\n".join(containers.logs(consumer, tail=300).splitlines())
        )
    return {"summary": summary, "limit": limit, "replay_logs": replay_logs}


def test_every_replayed_transaction_gets_a_decision(stack: Stack, replayed: dict) -> None:
    summary, limit = replayed["summary"], replayed["limit"]
    assert f"published {limit:,} transactions" in replayed["replay_logs"]
    assert summary["distinct"] == limit and summary["unknown"] == 0, summary
    # At-least-once: only the batch in flight at the kill may be decided twice.
    assert summary["total"] - summary["distinct"] <= int(option("consumer", "--batch-size"))


def test_metrics_endpoints_scrape(stack: Stack, replayed: dict) -> None:
    port = option("consumer", "--metrics-port")
    consumer = stack.probe("metrics", f"http://consumer:{port}/metrics")
    decided = sum(v for k, v in consumer.items() if k.startswith(DECISIONS_METRIC))
    assert decided > 0, sorted(consumer)
    serving_port = option("serving", "--rest_api_port")
    serving = stack.probe("metrics", f"http://serving:{serving_port}/monitoring/prometheus/metrics")
    assert serving.get(":tensorflow:serving:request_count", 0) > 0, sorted(serving)


@pytest.mark.parametrize("service", ["broker", "serving", "consumer"])
def test_containers_run_non_root_on_a_read_only_root(stack: Stack, service: str) -> None:
    name = stack.name(service)
    assert stack.containers.inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    mounts = compose_mounts(stack_services()[service])
    seen = stack.probe("writes", *IMAGE_DIRS, *(t for t, _ in mounts), container=name)
    assert (seen["uid"], seen["gid"]) == (UID, UID), seen
    writable = {path for path, ok in seen["writable"].items() if ok is True}
    assert writable == {target for target, read_only in mounts if not read_only}, seen
    # Refused for being read-only (the kernel checks that before permissions), not for the user.
    refusals = {ok for ok in seen["writable"].values() if ok is not True}
    assert refusals == {"Read-only file system"}, seen
