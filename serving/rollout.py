"""Version rollout through the model config file: ``stable`` / ``canary`` labels, load, relabel.

TF Serving (and the embedded server) re-read ``--model_config_file`` every
``--model_config_file_poll_wait_seconds``. This module edits that file for one model and waits,
through the REST status API, until the server has applied each edit:

* the model's ``model_version_policy`` is ``specific { versions: ... }``, so the stable and the
  canary version both stay loaded whatever else is on disk;
* a label moves only to a version the server already reports AVAILABLE (TF Serving refuses a
  reload that labels an unloaded version), and a version is unloaded only after no label names
  it any more. ``plan_steps`` turns any change into that order: load, relabel, unload;
* every write is atomic (temp file in the same directory, then rename) and the text is parsed
  back as a ``ModelServerConfig`` before it replaces the file; an exclusive lock on
  ``<config>.lock`` serialises concurrent editors.

If the server does not reach a step within the timeout, the file is put back to the text it had
before the command and the error names what the server was still missing. A config whose model
has no ``stable`` label yet (the seed config: ``latest`` policy) is adopted: its stable version
is the newest one the server reports AVAILABLE.

Only files and ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]`` are used, so the same code
works on a local models directory and on the models volume mounted in a Kubernetes pod.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from google.protobuf import text_format

from core.metadata import ModelMetadata
from core.model import model_versions
from core.settings import ROLLOUT_CANARY, ROLLOUT_MODES, Settings
from serving.config import ConfigError, parse_model_server_config

STABLE = "stable"
CANARY = "canary"
MANAGED_LABELS = (STABLE, CANARY)
CONFIG_FILE_NAME = "models.config"
AVAILABLE = "AVAILABLE"


class RolloutError(ValueError):
    """A rollout command cannot be done; the message names the version, label or file."""


@dataclass(frozen=True)
class ServingState:
    """What the config asks of one model: the versions it keeps loaded and its labels."""

    versions: frozenset[int]
    labels: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "no labels"
        return f"versions {sorted(self.versions)}, {labels}"


def plan_steps(current: ServingState, target: ServingState) -> list[ServingState]:
    """The states to go through from ``current`` to ``target``, each safe to apply after the
    previous one is live: load the new versions (dropping labels that go away), then move the
    labels, then unload what is no longer wanted."""
    stray = {k: v for k, v in target.labels.items() if v not in target.versions}
    if stray:
        raise RolloutError(f"labels {stray} name versions that would not be loaded")
    both = current.versions | target.versions
    kept = {k: v for k, v in current.labels.items() if k in target.labels}
    candidates = [
        ServingState(both, kept) if both != current.versions else current,
        ServingState(both, dict(target.labels)),
        target,
    ]
    steps: list[ServingState] = []
    previous = current
    for state in candidates:
        if state != previous:
            steps.append(state)
            previous = state
    return steps


# --- the config file ---------------------------------------------------------------------------


def model_entry(config: Any, model_name: str, source: Path) -> Any:
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            return entry
    names = [e.name for e in config.model_config_list.config]
    raise RolloutError(f"{source}: model {model_name!r} is not configured (models: {names})")


def configured_state(entry: Any) -> ServingState | None:
    """The entry's state, or None when its policy is not ``specific`` (a seed config)."""
    policy = entry.model_version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return None
    return ServingState(frozenset(policy.specific.versions), dict(entry.version_labels))


def render(config: Any, model_name: str, state: ServingState, source: Path) -> str:
    """``config`` with ``model_name`` set to ``state``, as text that parses back (checked)."""
    edited = type(config)()
    edited.CopyFrom(config)
    entry = model_entry(edited, model_name, source)
    entry.model_version_policy.specific.versions[:] = sorted(state.versions)
    entry.version_labels.clear()
    entry.version_labels.update(state.labels)
    text = text_format.MessageToString(edited)
    try:
        parse_model_server_config(text, str(source))
    except ConfigError as exc:
        raise RolloutError(f"the edited config would not be valid: {exc}") from exc
    return text


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename: a poller sees the old file or the new one."""
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise RolloutError(f"cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # readable by the server's user, as the file it replaces
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise RolloutError(f"cannot write {path}: {exc}") from exc
        raise


@contextlib.contextmanager
def locked(config_path: Path) -> Iterator[None]:
    """Exclusive lock on ``<config>.lock`` for a read-modify-write of the config."""
    lock_path = config_path.with_name(config_path.name + ".lock")
    try:
        lock = open(lock_path, "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise RolloutError(f"cannot create the lock file {lock_path}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the server's view -------------------------------------------------------------------------


def _status(url: str) -> tuple[int, list[dict[str, Any]]]:
    response = requests.get(url, timeout=5)
    if response.status_code != 200:
        return response.status_code, []
    return 200, response.json().get("model_version_status", [])


def unmet(serving_url: str, model_name: str, state: ServingState) -> list[str]:
    """What the server does not show of ``state`` yet (empty when it serves it)."""
    model_url = f"{serving_url.rstrip('/')}/v1/models/{quote(model_name, safe='')}"
    missing = []
    for version in sorted(state.versions):
        code, statuses = _status(f"{model_url}/versions/{version}")
        states = [s.get("state") for s in statuses]
        if AVAILABLE not in states:
            missing.append(f"version {version} AVAILABLE (now: {states or f'HTTP {code}'})")
    for label in MANAGED_LABELS:
        code, statuses = _status(f"{model_url}/labels/{label}")
        answers = sorted(int(s["version"]) for s in statuses if s.get("state") == AVAILABLE)
        wanted = state.labels.get(label)
        if wanted is None and code == 200:
            missing.append(f"label {label} removed (still answers with {answers})")
        elif wanted is not None and answers != [wanted]:
            missing.append(f"label {label} -> {wanted} (now: {answers or f'HTTP {code}'})")
    return missing


def available_versions(serving_url: str, model_name: str) -> list[int]:
    """The versions the server reports AVAILABLE; a 404 is none (TF Serving answers so for a
    configured model with no version loaded, the caller has checked the model is configured)."""
    url = f"{serving_url.rstrip('/')}/v1/models/{quote(model_name, safe='')}"
    try:
        code, statuses = _status(url)
    except requests.RequestException as exc:
        raise RolloutError(f"cannot read the status of model {model_name} at {url}: {exc}") from exc
    if code == 404:
        return []
    if code != 200:
        raise RolloutError(f"model {model_name} at {url}: HTTP {code}")
    return sorted(int(s["version"]) for s in statuses if s.get("state") == AVAILABLE)


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    """One version under the base path (or only in the config) as ``fraud model list`` shows it."""

    version: int
    on_disk: bool
    loaded: bool  # in the config's specific versions
    labels: tuple[str, ...]
    metrics: Mapping[str, Any]
    metadata_error: str = ""


@dataclass(frozen=True)
class Rollout:
    """Rollout commands on one model of a config file.

    ``base_path`` is where this process sees the model's version directories (the config's
    ``base_path`` is the server's view, which may differ, e.g. inside a container).
    """

    config_path: Path
    model_name: str
    base_path: Path
    serving_url: str
    timeout_s: float = 120.0
    poll_s: float = 0.2

    def _read(self) -> tuple[str, Any, Any]:
        try:
            text = self.config_path.read_text()
        except OSError as exc:
            raise RolloutError(f"cannot read model config file {self.config_path}: {exc}") from exc
        config = parse_model_server_config(text, str(self.config_path))
        return text, config, model_entry(config, self.model_name, self.config_path)

    def _check_on_disk(self, version: int) -> None:
        on_disk = model_versions(self.base_path)
        if version not in on_disk:
            raise RolloutError(
                f"version {version} of model {self.model_name} is not under {self.base_path} "
                f"(versions there: {on_disk})"
            )

    def _adopted(self, entry: Any) -> ServingState | None:
        """The configured state; for a config without a stable label, the version the server
        serves now as stable (None when it serves none: the model has no version yet)."""
        state = configured_state(entry)
        if state is not None and STABLE in state.labels:
            return state
        available = available_versions(self.serving_url, self.model_name)
        if not available:
            return None
        return ServingState(frozenset([available[-1]]), {STABLE: available[-1]})

    def _current(self, entry: Any) -> ServingState:
        state = self._adopted(entry)
        if state is None:
            raise RolloutError(
                f"{self.config_path}: model {self.model_name} has no {STABLE!r} label and the "
                f"server at {self.serving_url} reports no AVAILABLE version to adopt as stable"
            )
        return state

    def list_versions(self) -> list[VersionInfo]:
        _, _, entry = self._read()
        state = configured_state(entry) or ServingState(frozenset(), dict(entry.version_labels))
        on_disk = model_versions(self.base_path)
        rows = []
        for version in sorted(set(on_disk) | state.versions):
            metrics: Mapping[str, Any] = {}
            error = ""
            if version in on_disk:
                try:
                    metrics = ModelMetadata.read(self.base_path / str(version)).metrics
                except (OSError, ValueError) as exc:
                    error = str(exc)
            labels = tuple(sorted(k for k, v in state.labels.items() if v == version))
            loaded = version in state.versions
            rows.append(VersionInfo(version, version in on_disk, loaded, labels, metrics, error))
        return rows

    def canary(self, version: int) -> list[ServingState]:
        """Load ``version`` beside stable, then label it canary."""
        with locked(self.config_path):
            text, config, entry = self._read()
            self._check_on_disk(version)
            current = self._current(entry)
            stable = current.labels[STABLE]
            if version == stable:
                raise RolloutError(f"version {version} is already {STABLE}")
            if current.labels.get(CANARY) not in (None, version):
                raise RolloutError(
                    f"version {current.labels[CANARY]} is already {CANARY}: promote or roll it "
                    "back first"
                )
            return self._apply(text, config, current, _with_canary(stable, version))

    def promote(self) -> list[ServingState]:
        """Move stable to the canary version and unload the old stable."""
        with locked(self.config_path):
            text, config, entry = self._read()
            current = self._current(entry)
            canary = current.labels.get(CANARY)
            if canary is None:
                raise RolloutError(f"model {self.model_name} has no {CANARY} version to promote")
            target = ServingState(frozenset({canary}), {STABLE: canary})
            return self._apply(text, config, current, target)

    def rollback(self, to_version: int | None = None) -> list[ServingState]:
        """Drop the canary; with ``to_version``, make that version stable instead (and drop the
        canary and the current stable)."""
        with locked(self.config_path):
            text, config, entry = self._read()
            current = self._current(entry)
            if to_version is None:
                if CANARY not in current.labels:
                    raise RolloutError(f"model {self.model_name} has no {CANARY} to roll back")
                stable = current.labels[STABLE]
            else:
                self._check_on_disk(to_version)
                stable = to_version
            target = ServingState(frozenset({stable}), {STABLE: stable})
            return self._apply(text, config, current, target)

    def pin(self) -> ServingState | None:
        """Pin a config whose model has no stable label (the seed config: the newest version
        on disk is served) to the version the server serves now, labelled stable, so that a
        version pushed next is loaded only once it is made canary or stable. Returns the
        pinned state; None when the server serves no version yet (nothing to protect)."""
        with locked(self.config_path):
            text, config, entry = self._read()
            state = configured_state(entry)
            if state is not None and STABLE in state.labels:
                return state
            adopted = self._adopted(entry)
            if adopted is not None:
                self._write_steps(text, config, [adopted])
            return adopted

    def deploy(self, version: int, mode: str) -> tuple[str, list[ServingState]]:
        """Put a newly pushed version in service; returns the label it got and the steps.

        ``mode`` ``canary``: loaded beside stable and labelled canary (a pending canary is
        replaced: the newer blessed version is the one to judge). ``direct``: made stable at
        once, the previous stable and any canary unloaded. Without a stable version (the
        model's first), the version becomes stable in either mode.
        """
        if mode not in ROLLOUT_MODES:
            raise RolloutError(f"rollout mode must be one of {ROLLOUT_MODES}, got {mode!r}")
        with locked(self.config_path):
            text, config, entry = self._read()
            self._check_on_disk(version)
            current = self._adopted(entry)
            if current is not None and mode == ROLLOUT_CANARY:
                stable = current.labels[STABLE]
                if stable != version:
                    target = _with_canary(stable, version)
                    return CANARY, self._apply(text, config, current, target)
            target = ServingState(frozenset({version}), {STABLE: version})
            written = configured_state(entry)
            steps = plan_steps(current or written or ServingState(frozenset()), target)
            # An unpinned config already serving the version still gets pinned to it.
            steps = steps or ([target] if written != target else [])
            return STABLE, self._write_steps(text, config, steps)

    def _apply(
        self, original: str, config: Any, current: ServingState, target: ServingState
    ) -> list[ServingState]:
        return self._write_steps(original, config, plan_steps(current, target))

    def _write_steps(
        self, original: str, config: Any, steps: list[ServingState]
    ) -> list[ServingState]:
        """Write each state and wait until the server serves it; on a timeout put back
        ``original``."""
        texts = [render(config, self.model_name, s, self.config_path) for s in steps]
        for n, (state, text) in enumerate(zip(steps, texts, strict=True), 1):
            write_atomically(self.config_path, text)
            missing = self._wait(state)
            if missing:
                write_atomically(self.config_path, original)
                raise RolloutError(
                    f"step {n}/{len(steps)} ({state.describe()}): the server at "
                    f"{self.serving_url} did not get there within {self.timeout_s:g}s; still "
                    f"waiting for: {'; '.join(missing)}. {self.config_path} is restored to its "
                    "previous content"
                )
        return steps

    def _wait(self, state: ServingState) -> list[str]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                missing = unmet(self.serving_url, self.model_name, state)
            except requests.RequestException as exc:
                missing = [f"an answer from the server ({exc})"]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(self.poll_s)


def _with_canary(stable: int, canary: int) -> ServingState:
    return ServingState(frozenset({stable, canary}), {STABLE: stable, CANARY: canary})


def stable_config(model_name: str, base_path: Path, version: int, path: Path) -> str:
    """A model config file serving ``version`` of one model, labelled stable (what a fresh
    deployment writes before the server starts; ``path`` names the file in errors)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = model_name, str(base_path), "tensorflow"
    return render(config, model_name, ServingState(frozenset({version}), {STABLE: version}), path)


def default_config_path(base_path: Path) -> Path:
    """Where the config lives: beside the model's directory, on the same volume."""
    return base_path.parent / CONFIG_FILE_NAME


def settings_rollout(settings: Settings, base_path: Path, model_name: str) -> Rollout | None:
    """The rollout of ``model_name`` under ``base_path`` by ``settings`` (serving URL, config
    file); None when there is no model config file: the server then serves by its own version
    policy (the newest version), and there are no labels to move."""
    config = Path(settings.model_config_file) if settings.model_config_file else None
    config = config or default_config_path(base_path)
    if not config.exists():
        return None
    return Rollout(config, model_name, base_path, settings.serving_url)
