"""A local Prometheus on 127.0.0.1: Debian's ``prometheus`` package (2.42; ``make tools``
installs it), started as a subprocess that scrapes the platform's processes.

The configuration holds one scrape job per name given (its metrics path), each fed from a
file-based service discovery file that ``scrape`` rewrites, so targets may come and go while
the server runs; the rule files given, reloaded by ``reload``; and optionally an Alertmanager.
``make run`` (app/demo_dashboards.py) and the monitoring tests (tests/prometheus_fixtures.py)
both start it from here.

    server = PrometheusServer(home, {"fraud-consumer": "/metrics"}).start()
    server.scrape("fraud-consumer", ["127.0.0.1:9108"])
    server.query("up")
    server.stop()
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

BINARY = "prometheus"
INSTALL_HINT = "make tools installs it (Debian package prometheus)"
STARTUP_TIMEOUT_S = 60.0


class PrometheusMissing(RuntimeError):
    """No ``prometheus`` binary on PATH."""


def find_binary(name: str = BINARY) -> str:
    """The path of a Prometheus binary; PrometheusMissing naming it and how to install it."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusMissing(f"{name} is not on PATH: {INSTALL_HINT}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float
) -> None:
    """Until ``url``/-/ready answers 200; the log's tail in the error when the process exits or
    the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if _get(f"{url}/-/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s} s:\n{log.read_text()[-4000:]}")


def start_process(
    cmd: Sequence[str], log: Path, url: str, what: str, timeout_s: float = STARTUP_TIMEOUT_S
) -> subprocess.Popen[bytes]:
    """``cmd`` with its output appended to ``log``, once ready (stopped again when it is not)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, log, what, timeout_s)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


class PrometheusServer:
    """A Prometheus whose home directory holds its configuration, targets, data and log.

    ``jobs`` maps each scrape job's name to its metrics path. A scrape may not outlast its
    interval, so a busy target (the consumer on two shared cores) needs an interval of seconds.
    """

    def __init__(
        self,
        home: Path,
        jobs: Mapping[str, str],
        *,
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        scrape_interval: str = "2s",
        evaluation_interval: str = "1s",
        binary: str = BINARY,
    ) -> None:
        if not jobs:
            raise ValueError("PrometheusServer needs at least one scrape job")
        self.home = Path(home)
        self.binary = find_binary(binary)
        self.targets = self.home / "targets"
        self.config_path = self.home / "prometheus.yml"
        self.log_path = self.home / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.config = {
            "global": {
                "scrape_interval": scrape_interval,
                "evaluation_interval": evaluation_interval,
            },
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": path,
                    "file_sd_configs": [{"files": [str(self._targets_file(job))]}],
                }
                for job, path in jobs.items()
            ],
        }
        if alertmanager_url:
            host = alertmanager_url.removeprefix("http://")
            self.config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        self.proc: subprocess.Popen[bytes] | None = None

    def _targets_file(self, job: str) -> Path:
        return self.targets / f"{job}.json"

    def start(self) -> PrometheusServer:
        self.targets.mkdir(parents=True, exist_ok=True)
        for job in self.config["scrape_configs"]:
            if not self._targets_file(job["job_name"]).exists():
                self.scrape(job["job_name"], [])
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        self.proc = start_process(cmd, self.log_path, self.url, "prometheus")
        return self

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scrape(self, job: str, targets: Sequence[str]) -> None:
        """Scrape ``targets`` (host:port) as ``job`` from now on (an empty list stops it)."""
        jobs = [j["job_name"] for j in self.config["scrape_configs"]]
        if job not in jobs:
            raise ValueError(f"unknown scrape job {job!r}; configured: {jobs}")
        path = self._targets_file(job)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(targets), "labels": {}}]))
        tmp.replace(path)  # atomic: discovery never reads half a file

    def reload(self) -> None:
        """Re-read the configuration and rule files (``/-/reload``)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"prometheus refused to reload: {err.read().decode()}") from err

    def api(self, path: str, **params: Any) -> Any:
        """The ``data`` of ``/api/v1/<path>``; RuntimeError with Prometheus' answer otherwise."""
        query = urllib.parse.urlencode(params)
        status, body = _get(f"{self.url}/api/v1/{path}?{query}", timeout=30)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def up(self, job: str) -> bool:
        """Whether ``job`` has targets and the last scrape of each succeeded."""
        targets = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["labels"]["job"] == job]
        return bool(mine) and all(t["health"] == "up" for t in mine)

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
