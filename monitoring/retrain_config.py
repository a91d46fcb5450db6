"""What a retrain is configured with (``RetrainConfig``), what its runner gets (``RetrainJob``)
and what the trigger answers (``TriggerResult``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import contract as c
from core.settings import Settings

__all__ = ["CLUSTER", "LOCAL", "RetrainConfig", "RetrainJob", "Runner", "TriggerResult"]

LOCAL, CLUSTER = "local", "cluster"


@dataclass(frozen=True)
class RetrainConfig:
    run_dir: Path = Path("runs/retrain")
    mode: str = LOCAL
    # No new run within this many seconds of the last start (failed runs included: a broken
    # setup must not retrain in a loop).
    cooldown_s: float = 6 * 3_600
    # Data: the consumer's --state-dir and a historical labelled file (raw schema).
    state_dir: Path | None = None
    base_data: Path | None = None
    # Windows: relative to as_of (None = the latest event time in the data) ...
    as_of: str | None = None
    train_days: int = 28
    eval_days: int = 7
    # ... or explicit dates (train_start and train_end set: relative windows are not used).
    train_start: str | None = None
    train_end: str | None = None
    eval_start: str | None = None
    eval_end: str | None = None
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    model_base_path: Path = Settings().model_base_path
    model_name: str = Settings().model_name
    # Any other pipeline parameter (epochs, min_auc, review_budget, ...).
    pipeline_params: Mapping[str, Any] = field(default_factory=dict)
    # Cluster mode: KFP endpoint, and the dataset path as the pipeline's pods see it. With
    # export_path, the merged dataset is written there first (a volume the cluster mounts).
    host: str | None = None
    experiment: str = "fraud"
    package: Path | None = None
    cluster_data_path: str | None = None
    export_path: Path | None = None
    wait_timeout_s: float | None = None
    # In a pod: the projected ServiceAccount token the KFP API accepts (None: kfp.Client's own
    # defaults, e.g. a port-forward without auth).
    kfp_token_path: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in (LOCAL, CLUSTER):
            raise ValueError(f"retrain: mode must be {LOCAL!r} or {CLUSTER!r}, got {self.mode!r}")
        if self.cooldown_s < 0:
            raise ValueError(f"retrain: cooldown must be >= 0, got {self.cooldown_s}")
        if bool(self.train_start) != bool(self.train_end):
            raise ValueError("retrain: give both train_start and train_end, or neither")
        if not self.train_start and (self.train_days <= 0 or self.eval_days <= 0):
            raise ValueError("retrain: relative windows need train_days > 0 and eval_days > 0")
        if self.mode == LOCAL and self.state_dir is None and self.base_data is None:
            raise ValueError("retrain: local mode needs a state_dir (consumed data) or base_data")
        if self.mode == CLUSTER:
            if not self.host:
                raise ValueError("retrain: cluster mode needs the KFP host")
            if not (self.cluster_data_path or self.export_path):
                raise ValueError(
                    "retrain: cluster mode needs cluster_data_path (the dataset as the "
                    "pipeline pods see it) or export_path (where to write it for them)"
                )

    @property
    def explicit_windows(self) -> bool:
        return bool(self.train_start)

    @property
    def builds_dataset(self) -> bool:
        """Whether this side merges the data: always locally, for a cluster with export_path."""
        return self.mode == LOCAL or self.export_path is not None


@dataclass(frozen=True)
class RetrainJob:
    """What a runner gets: pipeline parameters and a private directory for its artifacts."""

    run_id: str
    reason: str
    run_dir: Path
    params: dict[str, Any]
    dataset: dict[str, Any] | None = None


Runner = Callable[[RetrainJob], Mapping[str, Any]]


@dataclass(frozen=True)
class TriggerResult:
    accepted: bool
    reason: str
    run_id: str | None = None
    refused: str | None = None  # IN_PROGRESS | COOLDOWN
    message: str = ""
