"""Start and stop ``python -m serving.model_server`` as a subprocess (tests and the benchmark).

The child runs the real server exactly as an operator would; only its environment is tuned:
TensorFlow's import is ~20 s on small machines when Python may not cache bytecode (this
environment sets PYTHONDONTWRITEBYTECODE), so the child writes/reads bytecode in a private
cache directory instead (PYTHONPYCACHEPREFIX), which makes every later start ~4x faster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_WITH_PARENT_ENV = "SERVING_EXIT_WITH_PARENT_PID"  # read by serving.model_server
READY_LINE = "Exporting HTTP/REST API at:"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if "PYTHONPYCACHEPREFIX" not in env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        uid = os.getuid() if hasattr(os, "getuid") else 0
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / f"fraud-pycache-{uid}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """A model server subprocess: REST on ``host:port``, gRPC on ``host:grpc_port``; use as a
    context manager."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.grpc_port = grpc_port if grpc_port is not None else free_port(host)
        self.args = list(args)
        # Without a log_path the log lives in a private temp dir, removed by stop().
        self._own_log_dir = log_path is None
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="model-server-")) / "server.log"
        self._env = child_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC API, as ``grpc.insecure_channel`` takes it."""
        return f"{self.host}:{self.grpc_port}"

    def start(self, ready_timeout_s: float = 120.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_offset = self.log_path.stat().st_size
        cmd = [
            sys.executable,
            "-m",
            "serving.model_server",
            f"--rest_api_port={self.port}",
            f"--port={self.grpc_port}",
            f"--rest_api_host={self.host}",
            *self.args,
        ]
        env = {**self._env, EXIT_WITH_PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait_ready(ready_timeout_s)
        return self

    def log_text(self) -> str:
        try:
            data = self.log_path.read_bytes()[getattr(self, "_log_offset", 0) :]
        except OSError:
            return ""
        return data.decode(errors="replace")

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_text()[-4000:]
                )
            if READY_LINE in self.log_text():
                try:
                    requests.get(f"{self.url}/v1/models", timeout=1.0)
                    return
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(
            f"model server not ready after {timeout_s}s:\n" + self.log_text()[-4000:]
        )

    def stop(self, timeout_s: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log_dir:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)
        return None if proc is None else proc.returncode

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_to_exit(args: Sequence[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the server expecting it to exit by itself (e.g. a startup failure)."""
    return subprocess.run(
        [sys.executable, "-m", "serving.model_server", *args],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
