"""REST client for TF Serving compatible model servers (the embedded one or real TF Serving).

Used by the Kafka stream consumer::

    client = ModelClient("http://127.0.0.1:8501", "fraud")
    client.wait_until_available(timeout_s=60)
    result = client.predict(rows)          # rows: list of dicts, or dict of columns
    result.scores, result.model_version    # one score per row, and the version that answered

Each batch is one ``:predict`` call in the columnar (``"inputs"``) format.

Knowing the answering version portably: a TF Serving predict response does not say which
version produced it. So the client resolves a concrete version first and calls
``/versions/{v}:predict``; the answer is then from exactly that version. The version comes from
the status API (highest ``AVAILABLE`` version, or the version a pinned label points at), cached
for ``version_refresh_s`` and refreshed at once when the server answers 404 for it (it was
unloaded). This uses only the public REST API, so it works against real TF Serving too.

Resilience: per-request timeouts; retries with exponential backoff and jitter on connection
errors, timeouts, 5xx and 429 (never on other 4xx: the same request would fail the same way);
and a circuit breaker (closed -> open after ``breaker_failures`` consecutive failures -> half-open
after ``breaker_reset_s`` -> one trial request decides) that fails fast with
:class:`CircuitOpenError` instead of piling requests onto a server that is down.

This module deliberately does not import TensorFlow.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import numpy as np
import orjson
import requests
import urllib3
from requests.utils import select_proxy

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


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


def with_retries(
    what: str,
    attempt_fn: Callable[[int], T],
    max_retries: int,
    backoff_s: float,
    backoff_max_s: float,
) -> T:
    """``attempt_fn(attempt number)``, again after exponential backoff with jitter while it
    raises :func:`retryable`'s exception, at most ``max_retries`` more times; then
    ``ServingUnavailableError`` naming the last failure."""
    last: Exception | None = None
    for attempt in range(1, max_retries + 2):
        try:
            return attempt_fn(attempt)
        except _Retryable as exc:
            last = exc
            if attempt > max_retries:
                break
            delay = min(backoff_max_s, backoff_s * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random() / 2))  # jitter de-synchronises
    raise ServingUnavailableError(
        f"{what} failed after {max_retries + 1} attempts: {last}"
    ) from last


class ModelClient:
    """Client of one model on one TF Serving compatible REST endpoint. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        model_name: str,
        version: int | str | None = None,
        label: str | None = None,
        *,
        timeout_s: float = 2.0,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 10.0,
        version_refresh_s: float = 1.0,
        signature_name: str | None = None,
        output_key: str | None = "fraud_probability",
    ) -> None:
        if version is not None and label is not None:
            raise ValueError(f"pin a version ({version}) or a label ({label!r}), not both")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = None if version is None else str(int(version))
        self.label = label
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.version_refresh_s = version_refresh_s
        self.signature_name = signature_name
        self.output_key = output_key
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self._model_url = f"{self.base_url}/v1/models/{quote(model_name, safe='')}"
        self._local = threading.local()  # one keep-alive Session per thread
        self._version_lock = threading.Lock()
        self._resolved: tuple[str, float] | None = None  # (version, resolved at)
        self._sessions: list[requests.Session] = []

    # --- plumbing ------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(_JSON_HEADERS)
            self._local.session = session
            with self._version_lock:
                self._sessions.append(session)
            self._local.pools = {}
            # Proxy/TLS settings from the environment, resolved once instead of on every call.
            self._local.send_kwargs = session.merge_environment_settings(
                self.base_url, {}, None, None, None
            )
        return session

    def _send(self, method: str, url: str, body: bytes | None) -> _Answer:
        """One HTTP exchange on this thread's keep-alive connections.

        The Session's adapter owns the connection pool. For plain-HTTP, proxy-less URLs (the
        normal in-cluster and loopback case) the request goes straight to that pool: Session /
        adapter per-call work (settings merge, Retry and Response objects, cookie extraction)
        costs about as much as scoring a 256-row batch on a small machine. Anything else (TLS,
        proxies) takes the regular adapter path.
        """
        session = self._session()
        origin, path = _split_url(url)
        pool = self._local.pools.get(origin, _UNSET)
        if pool is _UNSET:
            pool = None
            proxies = self._local.send_kwargs.get("proxies") or {}
            if url.startswith("http://") and select_proxy(url, proxies) is None:
                pool = session.get_adapter(url).poolmanager.connection_from_url(origin)
            self._local.pools[origin] = pool
        if pool is not None:
            try:
                raw = pool.urlopen(
                    method,
                    path,
                    body=body,
                    headers=_JSON_HEADERS,
                    retries=False,  # retries are ours, with backoff and the breaker
                    redirect=False,
                    preload_content=True,
                    timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                )
            except urllib3.exceptions.TimeoutError as exc:
                raise requests.Timeout(str(exc)) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise requests.ConnectionError(str(exc)) from exc
            return _Answer(raw.status, raw.data)
        request = requests.Request(method, url, data=body)
        response = session.get_adapter(url).send(
            session.prepare_request(request), timeout=self.timeout_s, **self._local.send_kwargs
        )
        return _Answer(response.status_code, response.content)

    def close(self) -> None:
        """Close every thread's connections (a later call opens new ones)."""
        with self._version_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _http(self, method: str, url: str, body: bytes | None = None) -> Any:
        """One HTTP attempt through the breaker. Returns the decoded JSON body."""
        self.breaker.before_call(self.base_url)
        try:
            response = self._send(method, url, body)
        except (requests.ConnectionError, requests.Timeout) as exc:
            self.breaker.record_failure()
            raise _Retryable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except Exception:
            # Whatever else went wrong, a half-open breaker must not stay waiting for a verdict.
            self.breaker.record_failure()
            raise
        if response.status_code in RETRYABLE_STATUS:
            self.breaker.record_failure()
            raise _Retryable(
                f"{method} {url}: HTTP {response.status_code}: {_error_text(response)}"
            )
        # Any other answer, errors included, proves the server is up.
        self.breaker.record_success()
        if response.status_code != 200:
            raise ServingHTTPError(response.status_code, _error_text(response), url)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ServingClientError(f"{method} {url}: response is not JSON: {exc}") from exc

    def _with_retries(self, what: str, attempt_fn: Callable[[int], T]) -> T:
        return with_retries(what, attempt_fn, self.max_retries, self.backoff_s, self.backoff_max_s)

    def _spec_url(self) -> str:
        if self.version is not None:
            return f"{self._model_url}/versions/{self.version}"
        if self.label is not None:
            return f"{self._model_url}/labels/{quote(self.label, safe='')}"
        return self._model_url

    # --- version resolution --------------------------------------------------------------------

    def _resolve_version(self, force: bool = False) -> str:
        if self.version is not None:
            return self.version
        with self._version_lock:
            cached = self._resolved
            if (
                not force
                and cached is not None
                and time.monotonic() - cached[1] < self.version_refresh_s
            ):
                return cached[0]
        doc = self._http("GET", self._spec_url())
        available = [
            int(v["version"])
            for v in doc.get("model_version_status", [])
            if v.get("state") == "AVAILABLE"
        ]
        if not available:
            what = f"label {self.label!r} of " if self.label else ""
            raise NoAvailableVersionError(
                f"no AVAILABLE version for {what}model {self.model_name} at {self.base_url}: "
                f"{orjson.dumps(doc).decode()[:300]}"
            )
        version = str(max(available))
        with self._version_lock:
            self._resolved = (version, time.monotonic())
        return version

    def current_version(self) -> str:
        """The version the next predict() will use (refreshing the cache if stale)."""
        return self._with_retries("resolve version", lambda _: self._resolve_version())

    # --- public API ----------------------------------------------------------------------------

    def predict(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> PredictResult:
        """Score one batch: rows as a list of dicts, or columns as a dict of lists/arrays."""
        columns, n_rows = to_columns(rows)
        payload: dict[str, Any] = {"inputs": columns}
        if self.signature_name:
            payload["signature_name"] = self.signature_name
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

        def attempt(n: int) -> PredictResult:
            version = self._resolve_version()
            url = f"{self._model_url}/versions/{version}:predict"
            started = time.perf_counter()
            try:
                doc = self._http("POST", url, body)
            except ServingHTTPError as exc:
                if exc.status_code != 404 or self.version is not None:
                    raise
                # The resolved version was unloaded (a newer one replaced it): a hot swap, not
                # a failure, so it costs no retry. Ask the server which version serves now.
                version = self._resolve_version(force=True)
                url = f"{self._model_url}/versions/{version}:predict"
                started = time.perf_counter()
                doc = self._http("POST", url, body)
            latency = time.perf_counter() - started
            outputs = doc.get("outputs") if isinstance(doc, dict) else None
            if outputs is None:
                raise ServingClientError(f"POST {url}: response has no 'outputs': {doc!r:.300}")
            scores = scores_of(outputs, self.output_key, n_rows, url)
            return PredictResult(scores, version, latency, n, outputs)

        return self._with_retries(f"predict on {self.model_name}", attempt)

    def status(self) -> dict[str, Any]:
        """GET /v1/models/{name}[/versions/{v}|/labels/{l}] (with retries)."""
        return self._with_retries("status", lambda _: self._http("GET", self._spec_url()))

    def metadata(self) -> dict[str, Any]:
        """GET .../metadata: model_spec and the SignatureDefMap (with retries)."""
        return self._with_retries(
            "metadata", lambda _: self._http("GET", f"{self._spec_url()}/metadata")
        )

    def wait_until_available(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> str:
        """Block until the model (or pinned version/label) has an AVAILABLE version; return it.

        Connection errors and 404s are expected while a server starts, so they are waited out;
        the circuit breaker is not involved.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                response = self._send("GET", self._spec_url(), None)
                if response.status_code == 200:
                    states = orjson.loads(response.content).get("model_version_status", [])
                    available = [int(v["version"]) for v in states if v["state"] == "AVAILABLE"]
                    if available:
                        version = str(max(available))
                        with self._version_lock:
                            self._resolved = (version, time.monotonic())
                        return version
                    last = f"no AVAILABLE version: {states}"
                else:
                    last = f"HTTP {response.status_code}: {_error_text(response)}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"model {self.model_name} not available at {self.base_url} after "
                    f"{timeout_s}s: {last}"
                )
            time.sleep(poll_s)


@dataclass(frozen=True)
class _Answer:
    status_code: int
    content: bytes


_UNSET: Any = object()


def _split_url(url: str) -> tuple[str, str]:
    """("http://host:port", "/path") of an absolute URL."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return f"{parts.scheme}://{parts.netloc}", path


def _error_text(response: _Answer) -> str:
    try:
        doc = orjson.loads(response.content)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return response.content[:500].decode(errors="replace")


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
