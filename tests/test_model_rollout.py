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
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serving_fixtures import install_broken_version, model_config, serve_model_config
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
def server(models: Path) -> Iterator[ServerProcess]:
    yield from serve_model_config(models)


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


# --- a pushed version goes into service by the rollout mode -----------------------------------


def blessed(work: Path, model_dir: Path) -> list[str]:
    """What push_step reads besides the model: a blessed verdict, evaluation scores, the
    training rows and the statistics file."""
    import json

    import numpy as np
    import pandas as pd

    from components.evaluate.evaluator import Verdict
    from components.evaluate.job import SCORES_FILE, VERDICT_FILE
    from core import contract as c

    rng = np.random.default_rng(0)
    rows = 200
    train = pd.DataFrame({n: rng.random(rows) for n in c.MODEL_INPUTS if n != c.TIMESTAMP})
    train[c.TIMESTAMP] = pd.date_range("2025-01-01", periods=rows, freq="h", tz="UTC")
    train[c.LABEL] = (rng.random(rows) < 0.1).astype(int)
    blessing = work / "blessing"
    blessing.mkdir(parents=True)
    verdict = Verdict(
        blessed=True, candidate={"auc": 0.9}, baseline={}, thresholds={"review": 0.5, "block": 0.9}
    )
    (blessing / VERDICT_FILE).write_text(json.dumps(verdict.to_dict()))
    np.save(blessing / SCORES_FILE, rng.random(rows))
    train.to_parquet(work / "train.parquet")
    (work / "stats.pb").write_bytes(b"")
    return [str(model_dir), str(blessing), str(work / "train.parquet"), str(work / "stats.pb")]


@pytest.fixture
def seeded(tmp_path: Path):
    """A server on the seed config (no version policy, no labels) over an empty base path."""
    base = tmp_path / MODEL_NAME
    base.mkdir()
    (tmp_path / "models.config").write_text(model_config([{"name": MODEL_NAME, "base_path": base}]))
    proc = ServerProcess(
        [
            f"--model_config_file={tmp_path / 'models.config'}",
            "--model_config_file_poll_wait_seconds=0.3",
            "--file_system_poll_wait_seconds=0.3",
        ],
        log_path=tmp_path / "server.log",
    )
    with proc:
        yield tmp_path, proc


def test_push_makes_the_first_version_stable_and_later_ones_canary(
    seeded: tuple[Path, ServerProcess],
    model_store: ModelStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from components.push.job import push_step

    root, server = seeded
    base = root / MODEL_NAME
    monkeypatch.setenv("FRAUD_SERVING_URL", server.url)
    monkeypatch.delenv("FRAUD_ROLLOUT_MODE", raising=False)
    monkeypatch.delenv("FRAUD_MODEL_CONFIG_FILE", raising=False)
    artifacts = {
        v: blessed(tmp_path_factory.mktemp(f"artifacts{v}"), model_store.fraud / str(v))
        for v in (1, 2)
    }

    def push(model: int) -> dict:
        return push_step(*artifacts[model], str(base), MODEL_NAME, 7, {})

    def labels() -> tuple[int | None, int | None]:
        return label_answers(server, STABLE), label_answers(server, CANARY)

    def config_state() -> ServingState | None:
        from serving.rollout import configured_state

        entry = parse_model_server_config((root / "models.config").read_text())
        return configured_state(entry.model_config_list.config[0])

    first = push(1)
    assert (first["version"], first["serving"]) == (1, STABLE)
    assert labels() == (1, None)
    assert config_state() == ServingState(frozenset({1}), {STABLE: 1})

    second = push(2)
    assert (second["version"], second["serving"]) == (2, CANARY)
    assert labels() == (1, 2)
    # A newer blessed version replaces a canary still being judged.
    third = push(1)
    assert (third["version"], third["serving"]) == (3, CANARY)
    assert labels() == (1, 3)
    wait_for(lambda: version_state(server, 2) != "AVAILABLE", 30, "replaced canary unloaded")

    monkeypatch.setenv("FRAUD_ROLLOUT_MODE", "direct")
    direct = push(2)
    assert (direct["version"], direct["serving"]) == (4, STABLE)
    assert labels() == (4, None)
    assert config_state() == ServingState(frozenset({4}), {STABLE: 4})

    # Back on the seed config the server serves the newest version on its own: the push pins
    # that one as stable before its directory appears, so the new version only becomes canary.
    monkeypatch.setenv("FRAUD_ROLLOUT_MODE", "canary")
    write_atomically(
        root / "models.config", model_config([{"name": MODEL_NAME, "base_path": base}])
    )
    wait_for(lambda: label_answers(server, STABLE) is None, 30, "seed config applied")
    fifth = push(1)
    assert (fifth["version"], fifth["serving"]) == (5, CANARY)
    assert labels() == (4, 5)


def test_push_without_a_model_config_leaves_serving_to_the_server(
    model_store: ModelStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from components.push.job import push_step

    monkeypatch.delenv("FRAUD_MODEL_CONFIG_FILE", raising=False)
    base = tmp_path / "models" / MODEL_NAME
    result = push_step(
        *blessed(tmp_path / "work", model_store.fraud / "1"), str(base), MODEL_NAME, 7, {}
    )
    assert (result["version"], result["serving"]) == (1, "unmanaged")
    assert not (tmp_path / "models" / "models.config").exists()


def test_rollout_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import Settings

    with pytest.raises(ValueError, match=r"FRAUD_ROLLOUT_MODE.*'canary', 'direct'.*'sideways'"):
        Settings.from_env({"FRAUD_ROLLOUT_MODE": "sideways"})
