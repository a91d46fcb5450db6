"""Batched scoring through the model server, with the answering version's decision thresholds.

The thresholds live beside each exported model, in
``<model_base_path>/<version>/assets.extra/fraud_metadata.json``; the consumer reads that file
for whichever version answered a request (a new version can be hot-swapped in at any time) and
caches it per version, so the model server's REST API stays TF Serving's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core import contract as c
from core.metadata import METADATA_FILE, MetadataError, ModelMetadata

log = logging.getLogger(__name__)

METADATA_RETRY_S = 60.0  # between reads of a model metadata answer that could not be used


class ScoringUnavailable(RuntimeError):
    """Scoring failed for now (server down, circuit open, bad answer); the batch is held."""


class BatchRejected(RuntimeError):
    """The model server refused the batch's content (a 4xx other than an unavailable version):
    retrying the same rows fails the same way, so the offending rows are found and
    dead-lettered instead of holding the batch."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"model server answered HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


# 4xx answers that say nothing about the batch's content: the model or version is not there
# (yet), the request timed out, or the server sheds load. They are outages: hold and retry.
_NOT_ABOUT_CONTENT = frozenset({404, 408, 409, 429})


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
            meta = ModelMetadata.read(self.base / str(version))
        except FileNotFoundError as err:
            raise ScoringUnavailable(
                f"model version {version} answered but {path} does not exist: cannot decide "
                "without its thresholds (is --model-base-path the served model's directory?)"
            ) from err
        except MetadataError as err:
            raise ScoringUnavailable(f"model version {version}: {err}") from err
        except OSError as err:
            raise ScoringUnavailable(f"{path}: unreadable model metadata: {err}") from err
        thresholds = meta.thresholds
        return ModelThresholds(version, thresholds.review, thresholds.block, meta.label_delay_days)


class PredictAnswer(Protocol):
    scores: Sequence[float]
    model_version: Any
    latency_s: float


class Predictor(Protocol):
    """A model server client; ``deadline`` (a ``time.monotonic()`` instant, None: the client's
    own timeouts and retries) bounds a call, retries included."""

    def predict(
        self, inputs: Mapping[str, Sequence[Any]], *, deadline: float | None = None
    ) -> PredictAnswer: ...

    def metadata(self, *, deadline: float | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Scored:
    scores: list[float]
    thresholds: ModelThresholds
    latency_s: float

    @property
    def version(self) -> int:
        return self.thresholds.version


class Scorer:
    """One :predict call per batch. Failures come out by kind:

    * ``ScoringUnavailable`` (server down, timeouts, 5xx, circuit open, an unusable answer):
      the caller holds the batch and retries, a transaction is never decided without a score;
    * ``BatchRejected`` (a 4xx about the request's content): ``score_isolating`` finds the rows
      the server refuses so that only they are dead-lettered and the rest is decided.

    Before a call, every value is checked against the dtypes of the served signature (read
    from the model's metadata and refreshed when another version answers): a value the input
    tensor cannot hold (1e39 for a float32) is refused by name without a round trip.
    """

    def __init__(
        self, client: Predictor, thresholds: ThresholdStore, check_dtypes: bool = True
    ) -> None:
        self.client = client
        self.thresholds = thresholds
        self.check_dtypes = check_dtypes
        # (version the signature was read from, input name -> TF dtype); None: not read yet.
        self._signature: tuple[int | None, dict[str, str]] | None = None
        self._last_version: int | None = None
        self._metadata_retry_at = float("-inf")

    def score(
        self, inputs: Mapping[str, Sequence[Any]], rows: int, deadline: float | None = None
    ) -> Scored:
        try:
            answer = self.client.predict(inputs, deadline=deadline)
        except ScoringUnavailable:
            raise
        except Exception as err:
            status = getattr(err, "status_code", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in _NOT_ABOUT_CONTENT:
                raise BatchRejected(status, str(getattr(err, "message", err))) from err
            # The client already retried with backoff (and may have opened its breaker).
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
        self._last_version = version
        return Scored(scores, self.thresholds.get(version), float(answer.latency_s))

    def score_isolating(
        self, inputs: Mapping[str, Sequence[Any]], rows: int, deadline: float | None = None
    ) -> tuple[Scored | None, list[int], dict[int, str]]:
        """Score the batch, leaving out the rows the model refuses.

        Returns (scores of the kept rows, the kept row positions in order, {refused row: the
        reason}). Rows are refused by the dtype check, or by the server: a ``BatchRejected``
        batch is split in halves until each refused row stands alone (log2 of the batch size
        extra calls per bad row), and the kept rows are then scored in one call, so that one
        version decides them all. Raises ``ScoringUnavailable`` as ``score`` does, and when
        the server refuses the batch while accepting each of its rows alone. Every call it
        makes keeps to ``deadline``.
        """
        refused = self.check_inputs(inputs, rows, deadline)
        kept = [i for i in range(rows) if i not in refused]
        while kept:
            part = inputs if len(kept) == rows else _take(inputs, kept)
            try:
                return self.score(part, len(kept), deadline), kept, refused
            except BatchRejected as err:
                found = self._isolate(inputs, kept, err, deadline)
                if not found:
                    raise ScoringUnavailable(
                        f"the model server refuses the batch of {len(kept)} rows but none of "
                        f"them alone: {err}"
                    ) from err
                refused.update(found)
                kept = [i for i in kept if i not in found]
        return None, kept, refused

    def _isolate(
        self,
        inputs: Mapping[str, Sequence[Any]],
        rows: list[int],
        err: BatchRejected,
        deadline: float | None,
    ) -> dict[int, str]:
        """The rows of ``rows`` (refused as a whole with ``err``) that the server refuses."""
        if len(rows) == 1:
            return {rows[0]: err.message}
        found: dict[int, str] = {}
        half = len(rows) // 2
        for part in (rows[:half], rows[half:]):
            try:
                self.score(_take(inputs, part), len(part), deadline)
            except BatchRejected as part_err:
                found.update(self._isolate(inputs, part, part_err, deadline))
        return found

    def check_inputs(
        self, inputs: Mapping[str, Sequence[Any]], rows: int, deadline: float | None = None
    ) -> dict[int, str]:
        """{row: why} for the values the served signature's input tensors cannot hold."""
        if not self.check_dtypes:
            return {}
        dtypes = self._dtypes(deadline)
        refused: dict[int, str] = {}
        for name, values in inputs.items():
            fits = _FITS.get(dtypes.get(name, ""))
            if fits is None:
                continue
            for i, value in enumerate(values):
                if i not in refused and not fits(value):
                    refused[i] = f"{name}: {value!r} does not fit the model input's {dtypes[name]}"
        return refused

    def _dtypes(self, deadline: float | None) -> dict[str, str]:
        cached = self._signature
        if cached is not None and (
            self._last_version is None or cached[0] in (None, self._last_version)
        ):
            return cached[1]
        if time.monotonic() < self._metadata_retry_at:
            return {}
        try:
            version, dtypes = _signature_dtypes(self.client.metadata(deadline=deadline))
        except Exception as err:
            # Without the signature the server's own 400s still isolate bad rows.
            self._metadata_retry_at = time.monotonic() + METADATA_RETRY_S
            log.warning(
                "model metadata unreadable (%s): inputs not checked against the signature's "
                "dtypes for %.0f s",
                err,
                METADATA_RETRY_S,
            )
            return {}
        self._signature = (version, dtypes)
        return dtypes


_FLOAT32_MAX = 3.4028234663852886e38


def _fits_float32(value: Any) -> bool:
    # NaN and infinities are valid float32 values (TF Serving accepts them in JSON); only
    # finite values beyond the float32 range cannot be represented.
    return (
        isinstance(value, float | int)
        and not isinstance(value, bool)
        and (math.isnan(value) or math.isinf(value) or abs(value) <= _FLOAT32_MAX)
    )


def _fits_int(bits: int) -> Any:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


_FITS = {
    "DT_FLOAT": _fits_float32,
    "DT_DOUBLE": lambda v: isinstance(v, float | int) and not isinstance(v, bool),
    "DT_INT32": _fits_int(32),
    "DT_INT64": _fits_int(64),
    "DT_STRING": lambda v: isinstance(v, str | bytes),
}


def _signature_dtypes(doc: Any) -> tuple[int | None, dict[str, str]]:
    """(version, input name -> dtype) of the serving signature in a TF Serving metadata
    answer (``GET /v1/models/<name>/metadata``)."""
    try:
        spec = doc["model_spec"]
        version = int(spec["version"]) if spec.get("version") is not None else None
        sigs = doc["metadata"]["signature_def"]["signature_def"]
        sig = (
            sigs.get(spec.get("signature_name") or c.SERVING_SIGNATURE) or sigs[c.SERVING_SIGNATURE]
        )
        return version, {name: t["dtype"] for name, t in sig["inputs"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ScoringUnavailable(f"model metadata without a readable signature: {err!r}") from err


def _take(inputs: Mapping[str, Sequence[Any]], rows: list[int]) -> dict[str, list[Any]]:
    return {name: [values[i] for i in rows] for name, values in inputs.items()}


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


PROTOCOLS = ("rest", "grpc")


def model_client(protocol: str, serving_url: str, model_name: str, **options: Any) -> Any:
    """TF Serving's REST (``ModelClient``) or gRPC (``GrpcModelClient``) client; both take the
    same options and raise the same errors."""
    if protocol == "grpc":
        from serving.grpc_client import GrpcModelClient

        return GrpcModelClient(serving_url, model_name, **options)
    if protocol != "rest":
        raise ValueError(f"serving protocol must be one of {PROTOCOLS}, got {protocol!r}")
    from serving.client import ModelClient

    return ModelClient(serving_url, model_name, **options)


class LabelOrLatest:
    """Scores with the version the server's ``label`` names; while the server knows no such
    label, with the model's highest AVAILABLE version, as an unpinned client does.

    The fallback keeps a server without a model config file (``--model_name`` /
    ``--model_base_path``, the embedded defaults) or with the seed config (no labels) working.
    It cannot hand live traffic to a canary: ``fraud model`` (serving.rollout) labels the
    stable version in the same config write that loads a second version, and TF Serving never
    removes that label again while a canary exists. The label is looked up through the status
    API (``GET .../labels/<label>``, cached by the client for ``version_refresh_s``); a 4xx
    there means the label is unknown and is asked again after ``recheck_s``.
    """

    def __init__(self, labelled: Any, latest: Any, recheck_s: float = 1.0) -> None:
        self.labelled = labelled
        self.latest = latest
        self.label = labelled.label
        self.recheck_s = recheck_s
        self._unlabelled_until = float("-inf")
        self._using_label: bool | None = None

    def _client(self, deadline: float | None) -> Any:
        from serving.client import ServingHTTPError

        if time.monotonic() < self._unlabelled_until:
            return self.latest
        try:
            self.labelled.current_version(deadline=deadline)
        except ServingHTTPError as err:
            if not 400 <= err.status_code < 500:
                raise
            self._unlabelled_until = time.monotonic() + self.recheck_s
            self._note(False, err.message)
            return self.latest
        self._note(True, "")
        return self.labelled

    def _note(self, using_label: bool, why: str) -> None:
        if using_label == self._using_label:
            return
        self._using_label = using_label
        if using_label:
            log.info("scoring with the version labelled %r", self.label)
        else:
            log.warning(
                "the model server knows no %r label (%s): scoring with the highest AVAILABLE "
                "version until it does",
                self.label,
                why,
            )

    def predict(
        self, inputs: Mapping[str, Sequence[Any]], *, deadline: float | None = None
    ) -> PredictAnswer:
        return self._client(deadline).predict(inputs, deadline=deadline)

    def metadata(self, *, deadline: float | None = None) -> dict[str, Any]:
        return self._client(deadline).metadata(deadline=deadline)


def build_model_client(
    serving_url: str,
    model_name: str,
    timeout_s: float = 10.0,
    protocol: str = "rest",
    label: str | None = None,
) -> Predictor:
    """The shared model server client (retries, backoff and circuit breaker live there):
    ``rest`` takes a base URL (``http://host:8501``), ``grpc`` a target (``host:8500``). With
    ``label``, a ``LabelOrLatest`` over two such clients.

    The breaker's reset is short because the consumer holds and retries the batch itself: once
    the server is back, decisions should resume within a couple of seconds.
    """
    options: dict[str, Any] = {
        "timeout_s": timeout_s,
        "max_retries": 2,
        "breaker_failures": 3,
        "breaker_reset_s": 2.0,
        "output_key": c.SCORE_OUTPUT,
    }

    def client(pin: str | None) -> Any:
        return model_client(protocol, serving_url, model_name, label=pin, **options)

    if label is None:
        return client(None)
    return LabelOrLatest(client(label), client(None))
