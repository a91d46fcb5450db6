"""`dvc repro` reproduces the data pipeline bit for bit, and push/pull restores its outputs.

Works from any checkout: the working tree (tracked files with their uncommitted edits, and new
code under components/) is committed into a scratch git repository, then `git clone`d twice.
Each clone gets a tiny params.yaml; the pushing one a scratch remote (`dvc remote modify --local`).
The real `dvc` and `fraud` commands of this interpreter's environment run them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `dvc` and `fraud` live beside python
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = tuple(
    p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
)
# Copied when the checkout is not a git repository (e.g. an exported tarball).
FALLBACK_PATHS = (
    *PACKAGES,
    "pyproject.toml",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
)
# The data pipeline of dvc.yaml, last stage last: only these run (later stages, like training,
# are not this test's business and would be slow).
DATA_STAGES = ("simulate", "validate", "features")
TINY = {"n_customers": 120, "n_terminals": 240, "n_days": 30, "drift_day": 20}


def _env(tmp: Path, pythonpath: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
        DVC_GLOBAL_CONFIG_DIR=str(tmp / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(tmp / "dvc-system"),
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    if pythonpath is not None:
        # The clone's own code, not the editable install's checkout.
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    exe = shutil.which(args[0], path=env["PATH"])
    assert exe, f"{args[0]} not found on {env['PATH']}"
    return subprocess.Popen(
        [exe, *args[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{out}"
    return out


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    return _wait(_start(args, cwd, env))


def _git_files(*args: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def _source_files() -> list[str]:
    """The tracked files as they are in the working tree, plus new code in the packages."""
    try:
        return _git_files() + _git_files("--others", "--exclude-standard", "--", *PACKAGES)
    except (OSError, subprocess.CalledProcessError):
        files = []
        for name in FALLBACK_PATHS:
            path = REPO / name
            found = path.rglob("*") if path.is_dir() else [path]
            files += [str(p.relative_to(REPO)) for p in found if p.is_file()]
        return [f for f in files if "__pycache__" not in f]


def _snapshot_repo(dst: Path, env: dict[str, str]) -> Path:
    """A git repository holding the working tree as it is now, committed."""
    for name in _source_files():
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    _run(["git", "init", "-q"], dst, env)
    _run(["git", "add", "-A"], dst, env)
    _run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "snapshot"], dst, env)
    return dst


def _outputs(clone: Path) -> dict[str, str]:
    """Every output of the data stages as dvc.lock records it: path -> md5."""
    stages = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for name in DATA_STAGES for out in stages[name]["outs"]}


def _cached_outputs(clone: Path) -> list[str]:
    """Outputs that live in the DVC cache (and so on the remote), from dvc.yaml."""
    spec = yaml.safe_load((clone / "dvc.yaml").read_text())
    paths = []
    for stage in (spec["stages"][name] for name in DATA_STAGES):
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                if (opts or {}).get("cache", True):
                    paths.append(path)
    return paths


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _clone(source: Path, clone: Path, tmp: Path) -> dict[str, str]:
    """Clone with tiny parameters; returns the environment to run the clone's commands in."""
    env = _env(tmp, pythonpath=clone)
    _run(["git", "clone", "-q", str(source), str(clone)], tmp, env)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["simulate"].update(TINY)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return env


@pytest.fixture(scope="module")
def dvc_bin() -> None:
    if shutil.which("dvc", path=str(BIN)) is None or shutil.which("fraud", path=str(BIN)) is None:
        pytest.skip(f"dvc/fraud are not installed beside {sys.executable}")


def test_repro_is_reproducible_and_push_pull_restores(tmp_path, dvc_bin):
    source = _snapshot_repo(tmp_path / "source", _env(tmp_path))
    clones = [tmp_path / "clone_a", tmp_path / "clone_b"]
    envs = [_clone(source, clone, tmp_path) for clone in clones]
    # Both reproductions at once: they share nothing but the code.
    repro = ["dvc", "repro", DATA_STAGES[-1]]  # and everything upstream of it
    for proc in [_start(repro, clone, env) for clone, env in zip(clones, envs, strict=True)]:
        _wait(proc)

    first, second = (_outputs(clone) for clone in clones)
    assert first == second, "two clones reproduced different outputs"
    assert len(first) >= 3
    for path, md5 in first.items():
        for clone in clones:
            assert _md5(clone / path) == md5, path
    # The tiny parameters were used, not the committed defaults.
    lock = yaml.safe_load((clones[0] / "dvc.lock").read_text())
    assert (
        lock["stages"][DATA_STAGES[0]]["params"]["params.yaml"]["simulate"]["n_days"]
        == TINY["n_days"]
    )

    # Push to a scratch remote, lose every cached output and the cache, pull: the same bytes.
    clone, env = clones[0], envs[0]
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], clone, env)
    _run(["dvc", "push", "--with-deps", DATA_STAGES[-1]], clone, env)
    assert any(p.is_file() for p in remote.rglob("*"))
    cached = _cached_outputs(clone)
    assert set(cached) <= set(first) and len(cached) >= 3
    for path in cached:
        (clone / path).unlink()
    shutil.rmtree(clone / ".dvc" / "cache")
    _run(["dvc", "pull", "--with-deps", DATA_STAGES[-1]], clone, env)
    for path in cached:
        assert _md5(clone / path) == first[path], path
    # The local override never leaks into the committed config.
    assert str(remote) not in (clone / ".dvc" / "config").read_text()
