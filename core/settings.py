"""One typed settings object, parsed once from the environment (FRAUD_*) and overridden by flags.

Nothing here runs at import time; ``Settings.from_env()`` is called by the CLI entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from core import contract as c


@dataclass(frozen=True)
class Topics:
    transactions: str = "transactions"
    labels: str = "labels"
    decisions: str = "decisions"
    alerts: str = "alerts"
    dead_letter: str = "transactions-dlq"
    drift_events: str = "drift-events"
    # What the canary made of decided batches (streaming.shadow); never acted on.
    shadow_scores: str = "shadow-scores"


# How a newly pushed, blessed version reaches traffic when the server reads a model config file
# (serving.rollout.Rollout.deploy): as the canary beside stable, promoted only by the promotion
# rule, or as stable at once. The first version of a model is stable either way.
ROLLOUT_CANARY = "canary"
ROLLOUT_DIRECT = "direct"
ROLLOUT_MODES = (ROLLOUT_CANARY, ROLLOUT_DIRECT)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    raw_data: Path = Path("data/raw/transactions.parquet")
    # What the DVC pipeline's validate stage writes; the training pipeline's default input.
    validated_data: Path = Path("data/validated/transactions.parquet")
    # What the DVC pipeline's features stage writes.
    feature_table: Path = Path("data/features/features.parquet")
    model_base_path: Path = Path("models/fraud")
    model_name: str = "fraud"
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    bootstrap_servers: str = "127.0.0.1:9092"
    serving_url: str = "http://127.0.0.1:8501"
    serving_grpc_target: str = "127.0.0.1:8500"  # the consumer's with --serving-protocol grpc
    rollout_mode: str = ROLLOUT_CANARY
    # The server's --model_config_file as seen here; empty: models.config beside the base path.
    model_config_file: str = ""
    run_dir: Path = Path("runs")
    topics: Topics = field(default_factory=Topics)

    def __post_init__(self) -> None:
        if self.rollout_mode not in ROLLOUT_MODES:
            raise ValueError(
                f"rollout mode (FRAUD_ROLLOUT_MODE) must be one of {ROLLOUT_MODES}, "
                f"got {self.rollout_mode!r}"
            )

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> Settings:
        """FRAUD_<FIELD> overrides a default, e.g. FRAUD_BOOTSTRAP_SERVERS, FRAUD_MODEL_BASE_PATH."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"FRAUD_{f.name.upper()}")
            if raw is None or f.name == "topics":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError as err:
                raise ValueError(f"FRAUD_{f.name.upper()}={raw!r}: {err}") from err
        topics = Topics(
            **{
                t.name: env[f"FRAUD_TOPIC_{t.name.upper()}"]
                for t in fields(Topics)
                if f"FRAUD_TOPIC_{t.name.upper()}" in env
            }
        )
        return cls(**values, topics=topics)

    def with_overrides(self, **kwargs) -> Settings:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})
