"""`fraud model list|canary|promote|rollback` against a real model server subprocess.

The server reads a model config file polled every 0.3 s; the tests edit it only through
``serving.rollout`` (or the CLI) and check by REST which version each label answers with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shutil
import threading
from pathlib import Path

import pytest
import requests
from serving_fixtures import install_broken_version, model_config
from stream_fixtures import MODEL_NAME, ModelStore, install_version, metadata, wait_for

from app.cli import main as fraud_main
from serving._launch import ServerProcess
from serving.config import parse_model_server_config
from serving.rollout import (
    CANARY,
    STABLE,
    Rollout,
    RolloutError,
    ServingState,
    plan_steps,
    write_atomically,
)

METRICS = {1: {"auc": 0.91, "pr_auc": 0.42}, 2: {"auc": 0.93, "pr_auc": 0.47}}
BROKEN = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    base = root / MODEL_NAME
    for version in (1, 2):
        target = install_version(model_store.fraud, base, version)
        dataclasses.replace(metadata(version), metrics=METRICS[version]).write(target)
    # No stable label yet: the commands adopt what the server serves.
    config = model_config(
        [{"name": MODEL_NAME, "base_path": base, "policy": "specific { versions: 1 }"}]
    )
    (root / "models.config").write_text(config)
    return root


@pytest.fixture(scope="module")
def server(models: Path):
    proc = ServerProcess(
        [
            f"--model_config_file={models / 'models.config'}",
            "--model_config_file_poll_wait_seconds=0.3",
            "--file_system_poll_wait_seconds=0.5",
        ],
        log_path=models / "server.log",
    )
    with proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"


def rollout(models: Path, server: ServerProcess, timeout_s: float = 60.0) -> Rollout:
    return Rollout(
        config_path=models / "models.config",
        model_name=MODEL_NAME,
        base_path=models / MODEL_NAME,
        serving_url=server.url,
        timeout_s=timeout_s,
    )


def label_answers(server: ServerProcess, label: str) -> int | None:
    """The version a label's requests are served by (its metadata's model_spec), None if none."""
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/labels/{label}/metadata", timeout=5)
    return int(r.json()["model_spec"]["version"]) if r.status_code == 200 else None


def version_state(server: ServerProcess, version: int) -> str | None:
    r = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/versions/{version}", timeout=5)
    return r.json()["model_version_status"][0]["state"] if r.status_code == 200 else None


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fraud_main(argv)
    return code, out.getvalue(), err.getvalue()


def cli_args(models: Path, server: ServerProcess) -> list[str]:
    return [
        f"--model-base-path={models / MODEL_NAME}",
        f"--serving-url={server.url}",
        "--timeout=60",
    ]


def test_plan_loads_then_relabels_then_unloads() -> None:
    current = ServingState(frozenset({1, 2}), {STABLE: 1, CANARY: 2})
    assert plan_steps(current, ServingState(frozenset({3}), {STABLE: 3})) == [
        ServingState(frozenset({1, 2, 3}), {STABLE: 1}),
        ServingState(frozenset({1, 2, 3}), {STABLE: 3}),
        ServingState(frozenset({3}), {STABLE: 3}),
    ]
    # Promotion loads nothing: relabel, then unload.
    assert plan_steps(current, ServingState(frozenset({2}), {STABLE: 2})) == [
        ServingState(frozenset({1, 2}), {STABLE: 2}),
        ServingState(frozenset({2}), {STABLE: 2}),
    ]
    with pytest.raises(RolloutError, match="would not be loaded"):
        plan_steps(current, ServingState(frozenset({1}), {STABLE: 2}))


def test_canary_promote_rollback(models: Path, server: ServerProcess) -> None:
    wait_for(lambda: version_state(server, 1) == "AVAILABLE", 120, "version 1 served")
    base_args = cli_args(models, server)

    code, out, err = run_cli(["model", "canary", "2", *base_args])
    assert code == 0, err
    assert (label_answers(server, STABLE), label_answers(server, CANARY)) == (1, 2)
    config = parse_model_server_config((models / "models.config").read_text())
    entry = config.model_config_list.config[0]
    assert sorted(entry.model_version_policy.specific.versions) == [1, 2]

    code, out, err = run_cli(["model", "list", *base_args])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[0] == "1" and "[stable, loaded]" in lines[0] and "0.91" in lines[0]
    assert lines[1].split()[0] == "2" and "[canary, loaded]" in lines[1] and "0.47" in lines[1]

    code, out, err = run_cli(["model", "promote", *base_args])
    assert code == 0, err
    assert (label_answers(server, STABLE), label_answers(server, CANARY)) == (2, None)
    wait_for(lambda: version_state(server, 1) != "AVAILABLE", 30, "old stable unloaded")

    code, out, err = run_cli(["model", "rollback", "--to", "1", *base_args])
    assert code == 0, err
    assert (label_answers(server, STABLE), label_answers(server, CANARY)) == (1, None)
    wait_for(lambda: version_state(server, 2) != "AVAILABLE", 30, "rolled-back version unloaded")

    steps = rollout(models, server).canary(2)
    assert steps[-1] == ServingState(frozenset({1, 2}), {STABLE: 1, CANARY: 2})
    rollout(models, server).rollback()
    assert (label_answers(server, STABLE), label_answers(server, CANARY)) == (1, None)
    wait_for(lambda: version_state(server, 2) != "AVAILABLE", 30, "canary unloaded")


def test_bad_input_leaves_the_config_unchanged(models: Path, server: ServerProcess) -> None:
    config_path = models / "models.config"
    wait_for(lambda: version_state(server, 1) == "AVAILABLE", 120, "version 1 served")
    before = config_path.read_bytes()
    r = rollout(models, server, timeout_s=4.0)

    with pytest.raises(RolloutError, match=r"version 7 of model fraud is not under .*\[1, 2\]"):
        r.canary(7)
    with pytest.raises(RolloutError, match="no canary version to promote"):
        r.promote()
    with pytest.raises(RolloutError, match="no canary to roll back"):
        r.rollback()
    code, _, err = run_cli(["model", "canary", "9", *cli_args(models, server)])
    assert code == 2 and "version 9" in err
    assert config_path.read_bytes() == before

    # A version the server cannot load never gets a label; the file goes back as it was.
    install_broken_version(models / MODEL_NAME, BROKEN)
    try:
        with pytest.raises(RolloutError, match=rf"version {BROKEN} AVAILABLE.*restored") as exc:
            r.canary(BROKEN)
        assert "within 4s" in str(exc.value)
        assert config_path.read_bytes() == before
        assert label_answers(server, CANARY) is None
    finally:
        shutil.rmtree(models / MODEL_NAME / str(BROKEN))

    config_path.write_text(before.decode().replace("model_config_list {", "model_config_list [", 1))
    corrupt = config_path.read_bytes()
    try:
        with pytest.raises(
            ValueError, match=f"Invalid protobuf file: '{re.escape(str(config_path))}'"
        ):
            r.canary(2)
        assert config_path.read_bytes() == corrupt
    finally:
        config_path.write_bytes(before)


def test_writes_are_atomic_for_a_polling_reader(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    texts = [
        model_config([{"name": MODEL_NAME, "base_path": tmp_path, "labels": {STABLE: v}}])
        for v in range(1, 40)
    ]
    write_atomically(path, texts[0])
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(path.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            for text in texts:
                write_atomically(path, text)
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) <= set(texts), "a reader saw a partial file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"], "temp files left"
