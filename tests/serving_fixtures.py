"""Shared helpers for tests/test_model_server.py and tests/test_serving_client.py.

The tests never import TensorFlow themselves: models are exported by a subprocess
(``python -m serving._example_models``) and served by real ``python -m serving.model_server``
subprocesses, so the test process stays light and the server is tested as it is deployed.

Exported models are cached across test runs in a temp dir keyed by the builder's source and the
TensorFlow version (exporting costs ~20 s here); delete ``fraud-serving-test-models-*`` under the
temp dir to force a rebuild.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests

from serving import _example_models
from serving._example_models import tiny_expected_score
from serving._launch import REPO_ROOT, ServerProcess, child_env

STORE_VERSIONS = (1, 2, 3)
WARMUP_VERSION = 3  # ships assets.extra/tf_serving_warmup_requests (2 predict records)

ROWS: list[dict[str, Any]] = [
    {"amount": 12.5, "n_tx_24h": 3, "timestamp": "2024-05-01T13:45:00Z"},
    {"amount": 250.0, "n_tx_24h": 0, "timestamp": "2024-05-01T02:05:00Z"},
    {"amount": 3.25, "n_tx_24h": 11, "timestamp": "2024-05-02T23:59:59Z"},
]


def expected_scores(version: int, rows: Iterable[dict[str, Any]] = ROWS) -> list[float]:
    return [tiny_expected_score(r["amount"], r["n_tx_24h"], r["timestamp"], version) for r in rows]


def columns(rows: list[dict[str, Any]] = ROWS) -> dict[str, list[Any]]:
    return {name: [r[name] for r in rows] for name in rows[0]}


def _store_key() -> str:
    digest = hashlib.sha256(Path(_example_models.__file__).read_bytes())
    digest.update(importlib.metadata.version("tensorflow").encode())
    digest.update(repr((STORE_VERSIONS, WARMUP_VERSION)).encode())
    return digest.hexdigest()[:16]


def model_store() -> Path:
    """Directory with the tiny model exported as versions 1, 2, 3 (built once, then cached)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    store = Path(tempfile.gettempdir()) / f"fraud-serving-test-models-{uid}-{_store_key()}"
    if all((store / str(v) / "saved_model.pb").exists() for v in STORE_VERSIONS):
        return store
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=store.parent))
    cmd = [sys.executable, "-m", "serving._example_models", "tiny", str(staging)]
    for version in STORE_VERSIONS:
        cmd += ["--version", str(version)]
    cmd += ["--warmup-version", str(WARMUP_VERSION)]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"exporting test models failed:\n{done.stdout}\n{done.stderr}")
    try:
        staging.rename(store)
    except OSError:  # a concurrent run finished first; its store is equivalent
        shutil.rmtree(staging, ignore_errors=True)
    return store


def install_version(store: Path, base_path: Path, version: int, as_version: int | None = None):
    """Copy a stored version into a model's base path the safe way: hidden dir, then rename."""
    target = base_path / str(as_version if as_version is not None else version)
    staging = base_path / f".tmp-{target.name}"
    base_path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(store / str(version), staging)
    staging.rename(target)
    return target


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


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition"):
    """Poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (requests.RequestException, KeyError, ValueError) as exc:
            last_exc = exc
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc})"
    )


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
    "install_version",
    "model_config",
    "model_store",
    "version_states",
    "wait_for",
    "write_atomically",
]
