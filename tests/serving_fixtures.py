"""Helpers of the TF Serving API tests (tests/test_model_server.py, tests/test_serving_client.py).

The tests never import TensorFlow themselves: they serve the ``example`` models of the
``model_store`` fixture (tests/stream_fixtures.py) with real ``python -m serving.model_server``
subprocesses, so the test process stays light and the server is tested as it is deployed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests

from serving._example_models import tiny_expected_score
from serving._launch import ServerProcess

ROWS: list[dict[str, Any]] = [
    {"amount": 12.5, "n_tx_24h": 3, "timestamp": "2024-05-01T13:45:00Z"},
    {"amount": 250.0, "n_tx_24h": 0, "timestamp": "2024-05-01T02:05:00Z"},
    {"amount": 3.25, "n_tx_24h": 11, "timestamp": "2024-05-02T23:59:59Z"},
]


def expected_scores(version: int, rows: Iterable[dict[str, Any]] = ROWS) -> list[float]:
    return [tiny_expected_score(r["amount"], r["n_tx_24h"], r["timestamp"], version) for r in rows]


def columns(rows: list[dict[str, Any]] = ROWS) -> dict[str, list[Any]]:
    return {name: [r[name] for r in rows] for name in rows[0]}


def install_broken_version(base_path: Path, version: int) -> Path:
    """A complete-looking version whose saved_model.pb is garbage: its load must fail."""
    staging = base_path / f".tmp-{version}"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"\x08\x01this is not a SavedModel proto\xff\xfe")
    target = base_path / str(version)
    staging.rename(target)
    return target


def model_config(models: list[dict[str, Any]]) -> str:
    """Text-format ModelServerConfig. Each model: name, base_path, policy (text), labels."""
    parts = ["model_config_list {"]
    for m in models:
        parts.append("  config {")
        parts.append(f'    name: "{m["name"]}"')
        parts.append(f'    base_path: "{m["base_path"]}"')
        parts.append('    model_platform: "tensorflow"')
        if m.get("policy"):
            parts.append(f"    model_version_policy {{ {m['policy']} }}")
        for label, version in m.get("labels", {}).items():
            parts.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        parts.append("  }")
    parts.append("}")
    return "\n".join(parts) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def version_states(url: str, model: str) -> dict[int, str]:
    response = requests.get(f"{url}/v1/models/{model}", timeout=5)
    if response.status_code != 200:
        return {}
    return {int(v["version"]): v["state"] for v in response.json()["model_version_status"]}


__all__ = [
    "ROWS",
    "ServerProcess",
    "columns",
    "expected_scores",
    "install_broken_version",
    "model_config",
    "version_states",
    "write_atomically",
]


def serve_model_config(root: Path) -> Iterator[ServerProcess]:
    """A model server driven by ``root/models.config``, polled fast enough for rollout tests
    to see each edit within a second; fails the module if the server died during it."""
    proc = ServerProcess(
        [
            f"--model_config_file={root / 'models.config'}",
            "--model_config_file_poll_wait_seconds=0.3",
            "--file_system_poll_wait_seconds=0.5",
        ],
        log_path=root / "server.log",
    )
    with proc:
        yield proc
        assert proc.proc is not None and proc.proc.poll() is None, "server died during tests"
