"""The package layout holds: imports run one way, and packaging ships exactly the packages.

The layers are declared once, in pyproject.toml (``[tool.importlinter]``); the wheel's package
list and the repository's top-level packages must agree with it (the Dockerfile's ``COPY`` lines
follow the wheel's list: tests/test_deploy_manifests.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def layered_packages() -> list[str]:
    (contract,) = PYPROJECT["tool"]["importlinter"]["contracts"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def packaged() -> list[str]:
    return [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]


def top_level_packages() -> set[str]:
    return {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}


def test_imports_follow_the_layers() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_every_package_is_layered_and_packaged() -> None:
    layers = layered_packages()
    assert sorted(layers) == sorted(PYPROJECT["tool"]["importlinter"]["root_packages"])
    assert sorted(packaged()) == sorted(layers)
    assert set(layers) == top_level_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from the files a clone has (tracked or new, not ignored), outside the
    checkout so that the build leaves nothing in it."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    source = tmp_path_factory.mktemp("source")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, "-w", str(out), str(source)], check=True, timeout=600)
    (path,) = out.glob("fraud_platform-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_module_and_no_tests(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = {
        str(p.relative_to(ROOT))
        for pkg in packaged()
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected - names == set()
    shipped = {n.split("/")[0] for n in names if n.endswith(".py")}
    assert shipped == set(packaged())
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fraud = app.cli:main" in entry
