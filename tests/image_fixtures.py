"""The platform image and the container engine, for the tests that run containers.

Registered for every test module by ``pytest_plugins`` in tests/conftest.py.

* ``platform_image`` (session scoped): builds the image once per test session with
  ``.ci/image.sh``, the script behind ``make image`` (the engine caches its layers, so an
  unchanged tree rebuilds in seconds), and returns a ``Containers`` handle on it. The engine and
  its settings come from the script's output, so the tests use exactly what built the image.
* ``Containers``: runs the engine's CLI and its compose CLI (podman-compose for podman, ``docker
  compose`` for docker) with those settings, names compose containers and reads their health.

The build's output goes to ``image-build.log`` in the session's temporary directory; a failed
build fails the tests that need the image, quoting the end of that log.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "fraud-platform:dev"
BUILD_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Containers:
    """The container engine that built ``image``, with the environment it needs."""

    engine: str
    image: str
    env: dict[str, str] = field(repr=False)
    build_seconds: float = 0.0

    def run(
        self, *args: str, timeout_s: float = 600, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``ENGINE args...``; with ``check``, a non-zero exit fails naming the command."""
        return self._call([self.engine, *args], timeout_s, check, stdin)

    def compose(
        self, file: Path, project: str, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The compose CLI of the engine on ``file`` as project ``project``."""
        cli = ["podman-compose"] if self.engine == "podman" else [self.engine, "compose"]
        return self._call([*cli, "-f", str(file), "-p", project, *args], timeout_s, check, None)

    def container(self, project: str, service: str) -> str:
        """The name the compose CLI gives the first container of ``service``."""
        return f"{project}_{service}_1" if self.engine == "podman" else f"{project}-{service}-1"

    def inspect(self, container: str, template: str) -> str:
        return self.run("inspect", "--format", template, container).stdout.strip()

    def health(self, container: str) -> str:
        """The container's health status. Podman runs health checks from systemd timers, which
        a machine without systemd lacks: the check is run here, as such a timer would."""
        if self.engine == "podman":
            self.run("healthcheck", "run", container, check=False, timeout_s=60)
            return self.inspect(container, "{{.State.Healthcheck.Status}}")
        return self.inspect(container, "{{.State.Health.Status}}")

    def wait_healthy(self, container: str, timeout_s: float) -> float:
        """Seconds until ``container`` reports healthy; fails with its logs otherwise."""
        started = time.monotonic()
        status = ""
        while time.monotonic() - started < timeout_s:
            if self.inspect(container, "{{.State.Running}}") != "true":
                break
            status = self.health(container)
            if status == "healthy":
                return time.monotonic() - started
            time.sleep(2)
        raise AssertionError(
            f"{container} not healthy after {time.monotonic() - started:.0f} s "
            f"(last status {status!r}):\n{self.logs(container)}"
        )

    def wait_exit(self, container: str, timeout_s: float) -> int:
        """The exit code of ``container`` once it stopped; fails with its logs on a timeout."""
        try:
            done = self.run("wait", container, timeout_s=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"{container} still running after {timeout_s:.0f} s:\n{self.logs(container)}"
            ) from err
        return int(done.stdout.strip().splitlines()[-1])

    def logs(self, container: str, tail: int = 60) -> str:
        done = self.run("logs", "--tail", str(tail), container, check=False)
        return done.stdout + done.stderr

    def _call(
        self, argv: list[str], timeout_s: float, check: bool, stdin: str | None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv[:6])} ... exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done


def build_image(log_path: Path) -> Containers:
    """Build the image with .ci/image.sh (progress to ``log_path``); the engine it used."""
    started = time.monotonic()
    with log_path.open("w") as log:
        done = subprocess.run(
            ["bash", str(REPO / ".ci" / "image.sh"), IMAGE],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            cwd=REPO,
        )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise AssertionError(f".ci/image.sh failed ({done.returncode}), see {log_path}:\n{tail}")
    settings = dict(
        line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and line[0].isupper()
    )
    env = dict(os.environ)
    if "CONTAINERS_CONF" in settings:
        env["CONTAINERS_CONF"] = settings["CONTAINERS_CONF"]
    return Containers(settings["CONTAINER_ENGINE"], settings["IMAGE"], env, seconds)


@pytest.fixture(scope="session")
def platform_image(tmp_path_factory: pytest.TempPathFactory) -> Containers:
    containers = build_image(tmp_path_factory.getbasetemp() / "image-build.log")
    print(f"\nplatform image {containers.image} built in {containers.build_seconds:.0f} s")
    return containers
