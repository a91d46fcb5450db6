"""Real Prometheus and Alertmanager for the monitoring tests, on 127.0.0.1.

The servers are Debian's ``prometheus`` (2.42, with ``promtool``) and
``prometheus-alertmanager`` packages; ``make test`` installs them when they are missing. Both are
started once per session (registered by ``pytest_plugins`` in tests/conftest.py):

* ``webhook``: an HTTP receiver that records every notification Alertmanager posts;
* ``alertmanager``: the committed ``ALERTMANAGER_CONFIG`` with its webhook URLs pointed at
  ``webhook`` and its grouping waits cut to a second;
* ``prometheus``: 2 s scrape and 1 s evaluation intervals, alerts sent to ``alertmanager``, the
  scrape jobs of k8s/compose/prometheus.yml fed from files a test writes (``scrape``), and the
  rule file a test loads (``load_rules``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
ALERTMANAGER_CONFIG = REPO / "k8s/prometheus/alertmanager.yaml"
COMPOSE_PROMETHEUS = REPO / "k8s/compose/prometheus.yml"
PACKAGES = "prometheus prometheus-alertmanager"
STARTUP_TIMEOUT_S = 60.0


def tool(name: str) -> str:
    """The path of a Prometheus binary; a clear failure naming the packages when missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed: apt-get install {PACKAGES} (make test installs them)"
        )
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _start(cmd: list[str], log: Path, url: str, what: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log, what)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def _free_port() -> int:
    from serving._launch import free_port

    return free_port()


# --- the webhook receiver ------------------------------------------------------------------------


class WebhookReceiver:
    """Records the JSON bodies Alertmanager posts (its webhook payload, version 4)."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._received, self._lock = received, lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    def alerts(self, name: str, status: str = "firing") -> list[dict[str, Any]]:
        """Every delivered alert called ``name`` with ``status`` (firing or resolved)."""
        return [
            alert
            for note in self.notifications()
            for alert in note["alerts"]
            if alert["labels"].get("alertname") == name and alert["status"] == status
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


# --- Alertmanager ----------------------------------------------------------------------------------


def alertmanager_test_config(receiver_url: str) -> dict[str, Any]:
    """The committed configuration, delivering to ``receiver_url`` without waiting to group."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url
    config["route"].update(group_wait="1s", group_interval="1s")
    return config


@pytest.fixture(scope="session")
def alertmanager(
    tmp_path_factory: pytest.TempPathFactory, webhook: WebhookReceiver
) -> Iterator[str]:
    """The URL of a running Alertmanager that delivers to ``webhook``."""
    home = tmp_path_factory.mktemp("alertmanager")
    config = home / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_test_config(webhook.url)))
    url = f"http://127.0.0.1:{_free_port()}"
    cmd = [
        tool("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",  # no gossip port: a single instance
        "--log.level=warn",
    ]
    proc = _start(cmd, home / "alertmanager.log", url, "alertmanager")
    yield url
    _stop(proc)


# --- Prometheus ------------------------------------------------------------------------------------


class Prometheus:
    """A running Prometheus whose scrape targets and rules the tests set."""

    def __init__(self, home: Path, alertmanager_url: str) -> None:
        self.home = home
        self.targets = home / "targets"
        self.targets.mkdir()
        self.rules = home / "rules.yaml"
        self.rules.write_text("groups: []\n")
        self.url = f"http://127.0.0.1:{_free_port()}"
        config = self._config(alertmanager_url)
        for job in config["scrape_configs"]:
            self.scrape(job["job_name"], [])
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        cmd = [
            tool("prometheus"),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        self.proc = _start(cmd, home / "prometheus.log", self.url, "prometheus")

    def _config(self, alertmanager_url: str) -> dict[str, Any]:
        """compose's scrape jobs (their names and metrics paths), targets from files."""
        compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
        jobs = [
            {
                "job_name": job["job_name"],
                "metrics_path": job.get("metrics_path", "/metrics"),
                "file_sd_configs": [{"files": [str(self.targets / f"{job['job_name']}.json")]}],
            }
            for job in compose["scrape_configs"]
        ]
        return {
            # A scrape may not outlast its interval: 2 s leaves a busy test process time to answer.
            "global": {"scrape_interval": "2s", "evaluation_interval": "1s"},
            "rule_files": [str(self.rules)],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}
                ]
            },
            "scrape_configs": jobs,
        }

    def scrape(self, job: str, targets: list[str]) -> None:
        """Scrape ``targets`` (host:port) as ``job`` from now on (an empty list stops it)."""
        path = self.targets / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        tmp.replace(path)

    def load_rules(self, text: str) -> None:
        self.rules.write_text(text)
        answer = requests.post(f"{self.url}/-/reload", timeout=30)
        assert answer.status_code == 200, answer.text

    def api(self, path: str, **params: Any) -> Any:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = answer.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    def up(self, job: str) -> bool:
        targets = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["labels"]["job"] == job]
        return bool(mine) and all(t["health"] == "up" for t in mine)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, alertmanager: str) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), alertmanager)
    yield server
    server.stop()
