"""Real Prometheus and Alertmanager for the monitoring tests, on 127.0.0.1.

The servers are Debian's ``prometheus`` (2.42, with ``promtool``) and
``prometheus-alertmanager`` packages; ``make test`` installs them when they are missing. Both are
started once per session (registered by ``pytest_plugins`` in tests/conftest.py):

* ``webhook``: an HTTP receiver that records every notification Alertmanager posts;
* ``alertmanager``: the committed ``ALERTMANAGER_CONFIG`` with its webhook URLs pointed at
  ``webhook`` and its grouping waits cut to a second;
* ``prometheus``: monitoring/prometheus_server.py's server (the one `make run` starts) with 2 s
  scrape and 1 s evaluation intervals, alerts sent to ``alertmanager``, the scrape jobs of
  k8s/compose/prometheus.yml fed from files a test writes (``scrape``), and the rule file a test
  loads (``load_rules``).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.prometheus_server import PrometheusServer, free_port, start_process, stop_process

REPO = Path(__file__).resolve().parents[1]
ALERTMANAGER_CONFIG = REPO / "k8s/prometheus/alertmanager.yaml"
COMPOSE_PROMETHEUS = REPO / "k8s/compose/prometheus.yml"
PACKAGES = "prometheus prometheus-alertmanager"


def tool(name: str) -> str:
    """The path of a Prometheus binary; a clear failure naming the packages when missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed: apt-get install {PACKAGES} (make test installs them)"
        )
    return path


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
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [
        tool("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",  # no gossip port: a single instance
        "--log.level=warn",
    ]
    proc = start_process(cmd, home / "alertmanager.log", url, "alertmanager")
    yield url
    stop_process(proc)


# --- Prometheus ------------------------------------------------------------------------------------


class Prometheus(PrometheusServer):
    """monitoring.prometheus_server's server with compose's scrape jobs and one rule file the
    tests set (``load_rules``)."""

    def __init__(self, home: Path, alertmanager_url: str) -> None:
        compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
        jobs = {j["job_name"]: j.get("metrics_path", "/metrics") for j in compose["scrape_configs"]}
        self.rules = home / "rules.yaml"
        self.rules.write_text("groups: []\n")
        tool("prometheus")
        super().__init__(home, jobs, rule_files=[self.rules], alertmanager_url=alertmanager_url)
        self.start()

    def load_rules(self, text: str) -> None:
        self.rules.write_text(text)
        self.reload()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, alertmanager: str) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), alertmanager)
    yield server
    server.stop()
