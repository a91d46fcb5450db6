"""What the REST and the gRPC model clients share: their errors, the result of a predict call,
the circuit breaker, retries with backoff, and the conversion of rows to columns and of an
answer's outputs to one score per row.

Like both clients, this module does not import TensorFlow.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class ServingClientError(Exception):
    """Base class of the client's errors."""


class ServingHTTPError(ServingClientError):
    """The server answered with an error status; ``message`` is its ``{"error": ...}`` text."""

    def __init__(self, status_code: int, message: str, url: str) -> None:
        super().__init__(f"HTTP {status_code} from {url}: {message}")
        self.status_code = status_code
        self.message = message
        self.url = url


class ServingUnavailableError(ServingClientError):
    """Retries exhausted on connection errors / timeouts / 5xx / 429, or no version serving."""


class NoAvailableVersionError(ServingUnavailableError):
    """The model (or the pinned label/version) has no AVAILABLE version right now."""


class CircuitOpenError(ServingClientError):
    """The circuit breaker is open: the server failed repeatedly, calls fail fast for a while."""


@dataclass(frozen=True)
class PredictResult:
    scores: np.ndarray  # float64, one per row
    model_version: str  # the version that produced the scores
    latency_s: float  # wall time of the successful HTTP call
    attempts: int = 1  # HTTP predict attempts, retries included
    outputs: Any = None  # the raw "outputs" value, for models with several outputs


class CircuitBreaker:
    """Consecutive-failure circuit breaker; thread-safe; ``clock`` injectable for tests."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == self.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
                return self.HALF_OPEN
            return self._state

    def before_call(self, what: str) -> None:
        """Raise CircuitOpenError unless a call may go out now."""
        with self._lock:
            if self._state == self.OPEN:
                waited = self._clock() - self._opened_at
                if waited < self.reset_timeout_s:
                    raise CircuitOpenError(
                        f"circuit open for {what}: {self._failures} consecutive failures; "
                        f"next trial in {self.reset_timeout_s - waited:.1f}s"
                    )
                self._state = self.HALF_OPEN
                self._trial_in_flight = False
            if self._state == self.HALF_OPEN:
                if self._trial_in_flight:
                    raise CircuitOpenError(f"circuit half-open for {what}: trial call in flight")
                self._trial_in_flight = True

    def record_success(self) -> None:
        with self._lock:
            self._state = self.CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self._state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = self.OPEN
                self._opened_at = self._clock()


class _Retryable(Exception):
    """Internal: an attempt failed in a way worth retrying."""


def retryable(message: str) -> Exception:
    """The exception an attempt given to :func:`with_retries` raises to be retried."""
    return _Retryable(message)


def attempt_timeout(timeout_s: float, deadline: float | None, what: str) -> float:
    """One request's timeout: ``timeout_s``, cut to the time left before ``deadline`` (a
    ``time.monotonic()`` instant, None: no deadline). Once the deadline has passed, raises the
    retryable error that :func:`with_retries` then gives up on."""
    if deadline is None:
        return timeout_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Retryable(f"{what}: the caller's deadline passed")
    return min(timeout_s, left)


def with_retries(
    what: str,
    attempt_fn: Callable[[int], T],
    max_retries: int,
    backoff_s: float,
    backoff_max_s: float,
    deadline: float | None = None,
) -> T:
    """``attempt_fn(attempt number)``, again after exponential backoff with jitter while it
    raises :func:`retryable`'s exception, at most ``max_retries`` more times and never past
    ``deadline`` (a ``time.monotonic()`` instant); then ``ServingUnavailableError`` naming the
    last failure. The attempts themselves keep to the deadline through :func:`attempt_timeout`.
    """
    last: Exception | None = None
    for attempt in range(1, max_retries + 2):
        try:
            return attempt_fn(attempt)
        except _Retryable as exc:
            last = exc
            if attempt > max_retries:
                break
            delay = min(backoff_max_s, backoff_s * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2  # jitter de-synchronises
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise ServingUnavailableError(
                    f"{what} failed at the caller's deadline after {attempt} attempt(s): {exc}"
                ) from exc
            # A call that succeeds on a later attempt says nothing else of the time it took:
            # a name lookup that failed twice shows here only.
            log.info("%s: attempt %d of %d failed: %s", what, attempt, max_retries + 1, exc)
            time.sleep(delay)
    raise ServingUnavailableError(
        f"{what} failed after {max_retries + 1} attempts: {last}"
    ) from last


def to_columns(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple[Any, int]:
    """Rows (list of dicts) or columns (dict of sequences) -> (JSON-ready columns, row count)."""
    if isinstance(rows, Mapping):
        columns: dict[str, Any] = {}
        n_rows = -1
        for name, values in rows.items():
            if isinstance(values, np.ndarray):
                # orjson serialises numeric arrays natively; strings/objects need lists.
                if values.dtype.kind in "biuf":
                    values = np.ascontiguousarray(values)  # orjson needs C order
                else:
                    values = values.tolist()
            elif not isinstance(values, list):
                values = list(values)
            if n_rows == -1:
                n_rows = len(values)
            elif len(values) != n_rows:
                raise ValueError(
                    f"column {name!r} has {len(values)} values, the others have {n_rows}"
                )
            columns[name] = values
        if n_rows <= 0:
            raise ValueError("predict() needs at least one row")
        return columns, n_rows
    if not rows:
        raise ValueError("predict() needs at least one row")
    names = list(rows[0].keys())
    try:
        columns = {name: [row[name] for row in rows] for name in names}
    except KeyError as exc:
        raise ValueError(f"every row needs the same fields; a row lacks {exc}") from None
    return columns, len(rows)


def scores_of(outputs: Any, output_key: str | None, n_rows: int, url: str) -> np.ndarray:
    if isinstance(outputs, dict):
        if output_key is not None and output_key in outputs:
            outputs = outputs[output_key]
        elif len(outputs) == 1:
            (outputs,) = outputs.values()
        else:
            raise ServingClientError(
                f"{url}: model returns outputs {sorted(outputs)}; set output_key to pick one"
            )
    scores = np.asarray(outputs, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1 or scores.shape[0] != n_rows:
        raise ServingClientError(
            f"{url}: expected one score per row ({n_rows}), got shape {list(scores.shape)}"
        )
    return scores
