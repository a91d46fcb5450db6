"""Batched scoring through the model server, with the answering version's decision thresholds.

The thresholds live beside each exported model, in
``<model_base_path>/<version>/assets.extra/fraud_metadata.json``; the consumer reads that file
for whichever version answered a request (a new version can be hot-swapped in at any time) and
caches it per version, so the model server's REST API stays TF Serving's.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components import contract as c

log = logging.getLogger(__name__)

METADATA_FILE = Path("assets.extra") / "fraud_metadata.json"


class ScoringUnavailable(RuntimeError):
    """Scoring failed for now (server down, circuit open, bad answer); the batch is held."""


@dataclass(frozen=True)
class ModelThresholds:
    version: int
    review: float
    block: float
    label_delay_days: int | None

    def decide(self, score: float) -> str:
        return c.decide(score, self.review, self.block)


class ThresholdStore:
    """Reads and caches each version's ``fraud_metadata.json`` (the models volume is read-only)."""

    def __init__(self, model_base_path: Path) -> None:
        self.base = Path(model_base_path)
        self._cache: dict[int, ModelThresholds] = {}
        self._lock = threading.Lock()

    def path(self, version: int) -> Path:
        return self.base / str(version) / METADATA_FILE

    def get(self, version: int) -> ModelThresholds:
        with self._lock:
            cached = self._cache.get(version)
        if cached is not None:
            return cached
        loaded = self._load(version)
        with self._lock:
            self._cache[version] = loaded
        return loaded

    def _load(self, version: int) -> ModelThresholds:
        path = self.path(version)
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ScoringUnavailable(
                f"model version {version} answered but {path} does not exist: cannot decide "
                "without its thresholds (is --model-base-path the served model's directory?)"
            ) from err
        except (OSError, ValueError) as err:
            raise ScoringUnavailable(f"{path}: unreadable model metadata: {err}") from err
        try:
            review = float(meta["thresholds"]["review"])
            block = float(meta["thresholds"]["block"])
        except (KeyError, TypeError, ValueError) as err:
            raise ScoringUnavailable(
                f"{path}: needs thresholds.review and thresholds.block numbers ({err!r})"
            ) from err
        if not (0.0 <= review <= block <= 1.0) or math.isnan(review) or math.isnan(block):
            raise ScoringUnavailable(
                f"{path}: thresholds must satisfy 0 <= review <= block <= 1, got "
                f"review={review}, block={block}"
            )
        delay = meta.get("label_delay_days")
        return ModelThresholds(version, review, block, None if delay is None else int(delay))


class PredictAnswer(Protocol):
    scores: Sequence[float]
    model_version: Any
    latency_s: float


class Predictor(Protocol):
    def predict(self, inputs: Mapping[str, Sequence[Any]]) -> PredictAnswer: ...


@dataclass(frozen=True)
class Scored:
    scores: list[float]
    thresholds: ModelThresholds
    latency_s: float

    @property
    def version(self) -> int:
        return self.thresholds.version


class Scorer:
    """One :predict call per batch; any failure becomes ``ScoringUnavailable`` (the caller holds
    the batch and retries: a transaction is never dropped or decided without a score)."""

    def __init__(self, client: Predictor, thresholds: ThresholdStore) -> None:
        self.client = client
        self.thresholds = thresholds

    def score(self, inputs: Mapping[str, Sequence[Any]], rows: int) -> Scored:
        try:
            answer = self.client.predict(inputs)
        except ScoringUnavailable:
            raise
        except Exception as err:
            # The client already retried with backoff (and may have opened its breaker); from
            # here every kind of failure means the same thing: not scored yet, hold the batch.
            raise ScoringUnavailable(f"{type(err).__name__}: {err}") from err
        scores = [float(s) for s in _flat(answer.scores)]
        if len(scores) != rows:
            raise ScoringUnavailable(f"model answered {len(scores)} scores for {rows} rows")
        try:
            version = int(answer.model_version)
        except (TypeError, ValueError) as err:
            raise ScoringUnavailable(
                f"model answer carries no usable version ({answer.model_version!r})"
            ) from err
        return Scored(scores, self.thresholds.get(version), float(answer.latency_s))


def _flat(values: Any) -> list[Any]:
    """Scores as a flat list whether the server answered [b] or [b, 1]."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    out: list[Any] = []
    for v in values:
        if isinstance(v, list | tuple):
            out.extend(v)
        else:
            out.append(v)
    return out


def build_model_client(serving_url: str, model_name: str, timeout_s: float = 10.0) -> Predictor:
    """The shared REST client (retries, backoff and circuit breaker live there).

    The breaker's reset is short because the consumer holds and retries the batch itself: once
    the server is back, decisions should resume within a couple of seconds.
    """
    from serving.client import ModelClient

    return ModelClient(
        serving_url,
        model_name,
        timeout_s=timeout_s,
        max_retries=2,
        breaker_failures=3,
        breaker_reset_s=2.0,
        output_key=c.SCORE_OUTPUT,
    )
