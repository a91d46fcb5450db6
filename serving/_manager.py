"""Version management: poll each model's base path, load/warm/swap/unload versions, resolve
requests to a version, and answer the status API.

Semantics follow TF Serving's FileSystemStoragePathSource + AvailabilityPreservingPolicy:

* a version is an integer-named sub-directory of ``base_path``; here it must also be complete
  (``saved_model.pb`` + ``variables/``), so a half-copied directory is not even attempted;
* the model's version policy (``latest``/``all``/``specific``) picks the aspired versions;
* a new version is loaded and warmed up *before* versions that are no longer aspired are
  unloaded, and un-aspired versions are only unloaded once some aspired version is serving, so a
  version that fails to load never takes the model down;
* an unloading version first leaves the serving map, then waits for its in-flight requests;
* the status API keeps END entries (unloaded or failed versions) as a history, as TF Serving does.

A failed version is not retried until its directory changes (TF Serving retries a fixed number
of times, then gives up until restart).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving._errors import CODE_NUMBER, ServingError, invalid_argument, not_found
from serving.config import ConfigError, aspired_versions, load_model_server_config
from serving.metrics import ServingMetrics

log = logging.getLogger("serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
_VERSION_DIR = re.compile(r"^\d+$")
UNLOAD_DRAIN_TIMEOUT_S = 60.0

Loader = Callable[[str, int, Path], Any]  # (model name, version, path) -> Servable


@dataclass
class VersionState:
    version: int
    path: Path
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    servable: Any = None
    fingerprint: tuple[Any, ...] | None = None
    inflight: int = 0


@dataclass
class ModelState:
    name: str
    base_path: Path
    policy: Any
    labels: dict[str, int] = field(default_factory=dict)
    versions: dict[int, VersionState] = field(default_factory=dict)  # history incl. END
    # Replaced (never mutated) under the manager lock, so readers can take it without locking.
    serving: dict[int, VersionState] = field(default_factory=dict)
    base_path_unreadable: bool = False


def _is_complete(version_dir: Path) -> bool:
    has_graph = (version_dir / "saved_model.pb").is_file() or (
        version_dir / "saved_model.pbtxt"
    ).is_file()
    return has_graph and (version_dir / "variables").is_dir()


def fingerprint(version_dir: Path) -> tuple[Any, ...]:
    """Cheap identity of a version directory's content (names, sizes, mtimes)."""
    entries: list[Any] = []
    for path in sorted(version_dir.rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((str(path.relative_to(version_dir)), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def scan_versions(base_path: Path) -> dict[int, Path] | None:
    """Complete version dirs under base_path; None if base_path cannot be listed."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return None
    found: dict[int, Path] = {}
    for child in children:
        # Non-integer names (".tmp-3", "tmp_3", "3.partial") are staging dirs, never versions.
        if _VERSION_DIR.match(child.name) and child.is_dir() and _is_complete(child):
            found[int(child.name)] = child
    return found


class ModelManager:
    def __init__(
        self,
        model_server_config: Any,
        metrics: ServingMetrics,
        loader: Loader,
        *,
        allow_labels_for_unavailable: bool = False,
        poll_wait_s: float = 1.0,
        config_file: str = "",
        config_poll_wait_s: float = 0.0,
    ) -> None:
        self.metrics = metrics
        self._loader = loader
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._poll_wait_s = poll_wait_s
        self._config_file = config_file
        self._config_poll_wait_s = config_poll_wait_s
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()  # one poll/reload at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.models: dict[str, ModelState] = {}
        self._config_text: str | None = None
        self._add_models(model_server_config)

    # --- configuration -------------------------------------------------------------------------

    def _add_models(self, config: Any) -> None:
        for mc in config.model_config_list.config:
            model = ModelState(
                name=mc.name,
                base_path=Path(mc.base_path),
                policy=mc.model_version_policy if mc.HasField("model_version_policy") else None,
                labels=dict(mc.version_labels),
            )
            with self._cond:
                self.models = {**self.models, mc.name: model}

    def _label_errors(self, model: ModelState, labels: dict[str, int]) -> list[str]:
        if self._allow_unavailable_labels:
            return []
        return [
            f"Request to assign label to version {version} of model {model.name}, which is not "
            "currently available for inference"
            for label, version in sorted(labels.items())
            if version not in model.serving
        ]

    def check_labels(self) -> None:
        """After the initial load: every label must name an AVAILABLE version (unless allowed)."""
        errors = [e for m in self.models.values() for e in self._label_errors(m, m.labels)]
        if errors:
            raise ConfigError("FAILED_PRECONDITION: " + "; ".join(errors))

    def reload_config(self, config: Any) -> None:
        """Apply a new ModelServerConfig (models added/removed, policies, base paths, labels).

        Label changes that point at versions which are not AVAILABLE are rejected (the old
        labels stay) unless --allow_version_labels_for_unavailable_models.
        """
        with self._sync_lock:
            wanted = {mc.name: mc for mc in config.model_config_list.config}
            for name in [n for n in self.models if n not in wanted]:
                model = self.models[name]
                log.info("model %s removed from the config: unloading it", name)
                for vs in list(model.serving.values()):
                    self._unload(model, vs)
                with self._cond:
                    self.models = {k: v for k, v in self.models.items() if k != name}
            for name, mc in wanted.items():
                policy = mc.model_version_policy if mc.HasField("model_version_policy") else None
                model = self.models.get(name)
                if model is None:
                    model = ModelState(name=name, base_path=Path(mc.base_path), policy=policy)
                    with self._cond:
                        self.models = {**self.models, name: model}
                else:
                    model.base_path, model.policy = Path(mc.base_path), policy
                self._sync(model)
                labels = dict(mc.version_labels)
                errors = self._label_errors(model, labels)
                if errors:
                    log.error(
                        "config reload: keeping old labels of %s: %s", name, "; ".join(errors)
                    )
                else:
                    model.labels = labels

    def _maybe_reload_config_file(self) -> None:
        try:
            text = Path(self._config_file).read_text()
        except OSError as exc:
            log.error("cannot re-read model config %s: %s", self._config_file, exc)
            return
        if text == self._config_text:
            return
        first = self._config_text is None
        self._config_text = text
        if first:  # the text the server started with
            return
        try:
            config = load_model_server_config(self._config_file)
        except ConfigError as exc:
            log.error("config reload failed, keeping the current config: %s", exc)
            return
        log.info("model config file changed: reloading %s", self._config_file)
        self.reload_config(config)

    # --- polling / loading -----------------------------------------------------------------------

    def poll_once(self) -> None:
        with self._sync_lock:
            for model in list(self.models.values()):
                try:
                    self._sync(model)
                except Exception:  # never let one model's surprise stop polling of the others
                    log.exception("error while syncing versions of model %s", model.name)

    def _sync(self, model: ModelState) -> None:
        on_disk = scan_versions(model.base_path)
        if on_disk is None:
            if not model.base_path_unreadable:  # say it once, not every poll
                log.warning(
                    "base path %s of model %s cannot be listed; keeping current versions",
                    model.base_path,
                    model.name,
                )
            model.base_path_unreadable = True
            return
        model.base_path_unreadable = False
        aspired = aspired_versions(model.policy, list(on_disk))
        if not on_disk:
            log.debug("no versions of model %s found under %s", model.name, model.base_path)
        for version in sorted(aspired, reverse=True):  # newest first: it becomes latest sooner
            vs = model.versions.get(version)
            if vs is not None and vs.state in (LOADING, AVAILABLE):
                continue
            path = on_disk[version]
            if vs is not None and vs.error_code != "OK" and vs.fingerprint == fingerprint(path):
                continue  # failed before and unchanged since: retrying would fail the same way
            self._load(model, version, path)
        serving = model.serving
        if not aspired or any(v in aspired for v in serving):
            for version, vs in sorted(serving.items()):
                if version not in aspired:
                    self._unload(model, vs)

    def _load(self, model: ModelState, version: int, path: Path) -> None:
        vs = VersionState(version=version, path=path, state=LOADING)
        vs.fingerprint = fingerprint(path)
        with self._cond:
            model.versions[version] = vs
        log.info(
            "Loading servable version {name: %s version: %d} from %s", model.name, version, path
        )
        started = time.perf_counter()
        try:
            servable = self._loader(model.name, version, path)
        except Exception as exc:
            code = getattr(exc, "code", "UNKNOWN")
            vs.error_code = code if code in CODE_NUMBER and code != "OK" else "UNKNOWN"
            vs.error_message = str(getattr(exc, "message", "") or exc)
            vs.state = END
            self.metrics.version_failed(model.name, version, vs.error_code)
            log.error(
                "Loading servable version {name: %s version: %d} failed: %s: %s",
                model.name,
                version,
                vs.error_code,
                vs.error_message,
            )
            return
        vs.servable = servable
        with self._cond:
            vs.state = AVAILABLE
            model.serving = {**model.serving, version: vs}
        seconds = time.perf_counter() - started
        self.metrics.version_loaded(model.name, version, seconds)
        self.metrics.set_latest(model.name, max(model.serving))
        log.info(
            "Successfully loaded servable version {name: %s version: %d} in %.2fs",
            model.name,
            version,
            seconds,
        )

    def _unload(self, model: ModelState, vs: VersionState) -> None:
        log.info("Quiescing servable version {name: %s version: %d}", model.name, vs.version)
        with self._cond:
            vs.state = UNLOADING
            model.serving = {v: s for v, s in model.serving.items() if v != vs.version}
            # Requests that resolved this version before it left the map finish on it.
            drained = self._cond.wait_for(lambda: vs.inflight == 0, UNLOAD_DRAIN_TIMEOUT_S)
        if not drained:
            log.warning(
                "unloading %s version %d with %d requests still in flight after %.0fs",
                model.name,
                vs.version,
                vs.inflight,
                UNLOAD_DRAIN_TIMEOUT_S,
            )
        if vs.servable is not None:
            vs.servable.unload()
        vs.servable = None
        vs.state = END
        self.metrics.version_unloaded(model.name, vs.version)
        self.metrics.set_latest(model.name, max(model.serving) if model.serving else None)
        log.info("Done unloading servable version {name: %s version: %d}", model.name, vs.version)

    def start(self) -> None:
        if self._config_file and self._config_poll_wait_s > 0:
            self._maybe_reload_config_file()  # remember the text the server started with
        self._thread = threading.Thread(target=self._run, name="version-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_config_check = time.monotonic() + self._config_poll_wait_s
        while not self._stop.wait(self._poll_wait_s):
            if self._config_poll_wait_s > 0 and time.monotonic() >= next_config_check:
                next_config_check = time.monotonic() + self._config_poll_wait_s
                try:
                    self._maybe_reload_config_file()
                except Exception:
                    log.exception("config reload failed")
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- request resolution ----------------------------------------------------------------------

    def _resolve(self, name: str, version: int | None, label: str | None) -> VersionState:
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        serving = model.serving if model is not None else {}
        if version is None:
            if not serving:
                raise not_found(f"Servable not found for request: Latest({name})")
            return serving[max(serving)]
        vs = serving.get(version)
        if vs is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return vs

    @contextmanager
    def acquire(self, name: str, version: int | None, label: str | None) -> Iterator[Any]:
        """Pin a serving version for the duration of one request."""
        with self._cond:
            vs = self._resolve(name, version, label)
            vs.inflight += 1
        try:
            yield vs
        finally:
            with self._cond:
                vs.inflight -= 1
                if vs.inflight == 0:
                    self._cond.notify_all()

    def is_configured(self, name: str) -> bool:
        return name in self.models

    def status(self, name: str, version: int | None, label: str | None) -> list[VersionState]:
        """Versions for GetModelStatus, newest first (TF Serving's VersionMap order)."""
        model = self.models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        with self._cond:  # the poller inserts into model.versions
            return self._status_locked(model, name, version)

    def _status_locked(
        self, model: ModelState | None, name: str, version: int | None
    ) -> list[VersionState]:
        if model is None or not model.versions:
            if version is not None:
                raise not_found(f"Could not find version {version} of model {name}")
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            vs = model.versions.get(version)
            if vs is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [vs]
        return [model.versions[v] for v in sorted(model.versions, reverse=True)]

    def check_not_shutting_down(self) -> None:
        if self._stop.is_set():
            raise ServingError("UNAVAILABLE", "Server is shutting down")
