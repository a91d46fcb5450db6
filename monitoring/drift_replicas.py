"""Drift state files of consumer replicas that share one state volume.

Each replica monitors its own partitions, so each keeps its own ``DriftLoop`` state. In a
Deployment a pod's name (its hostname) survives a container restart but not a replacement
(rolling update, eviction). So a replica takes, in this order:

1. its own file, ``<dir>/<pod>.json`` (the container restarted);
2. else the most recently written *orphan*: a file nobody has written for ``orphaned_after_s``
   (its pod is gone), adopted by renaming it to its own name. A rename is atomic: when two new
   pods reach for the same orphan, one gets it and the other moves on to the next;
3. else a new file (the monitor warms up afresh).

A replica saves its state every ``DriftLoopConfig.save_interval_s`` while transactions flow, so
``orphaned_after_s`` must be well above that interval. A replica idle for longer may see its
file adopted; both then go on from the same windows, which only repeats statistics on
equivalent partitions (the retrain they may both ask for is claimed once,
``monitoring.retrain_claim``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "STATE_SUFFIX",
    "WINDOWS_SUFFIX",
    "drift_files",
    "replica_state_path",
    "replica_windows_log",
]

STATE_SUFFIX = ".json"
WINDOWS_SUFFIX = ".windows.jsonl"


def _owner_name(owner: str) -> str:
    if not owner or "/" in owner or owner.startswith("."):
        raise ValueError(f"drift state: {owner!r} cannot name a state file (a pod name is)")
    return owner


def replica_state_path(
    directory: Path,
    owner: str,
    orphaned_after_s: float,
    clock: Callable[[], float] = time.time,
) -> Path:
    """The drift state file of replica ``owner`` under ``directory``; see the module doc."""
    if orphaned_after_s <= 0:
        raise ValueError(f"drift state: orphaned_after must be > 0 s, got {orphaned_after_s}")
    directory.mkdir(parents=True, exist_ok=True)
    own = directory / f"{_owner_name(owner)}{STATE_SUFFIX}"
    if own.exists():
        return own
    for orphan in _orphans(directory, own, clock() - orphaned_after_s):
        try:
            os.rename(orphan, own)
        except FileNotFoundError:
            continue  # another new replica adopted it first
        log.info("drift: adopted the state of a replica that is gone: %s -> %s", orphan, own)
        return own
    return own


def replica_windows_log(directory: Path, owner: str) -> Path:
    """The per-window statistics log of replica ``owner`` (appends from several pods to one
    file on a network volume may interleave)."""
    return directory / f"{_owner_name(owner)}{WINDOWS_SUFFIX}"


def drift_files(
    state_dir: Path, replicas_dir: Path | None, owner: str, orphaned_after_s: float
) -> tuple[Path, Path]:
    """(state file, windows log) of a consumer: one pair in ``state_dir``, or with
    ``replicas_dir`` this replica's own (see the module doc)."""
    if replicas_dir is None:
        return state_dir / "drift_state.json", state_dir / "drift_windows.jsonl"
    state = replica_state_path(replicas_dir, owner, orphaned_after_s)
    return state, replica_windows_log(replicas_dir, owner)


def _orphans(directory: Path, own: Path, written_before: float) -> list[Path]:
    """State files last written before ``written_before``, the most recent first."""
    found: list[tuple[float, Path]] = []
    for path in directory.glob(f"*{STATE_SUFFIX}"):
        if path == own or path.name.startswith("."):
            continue
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if mtime < written_before:
            found.append((mtime, path))
    return [path for _, path in sorted(found, reverse=True)]
