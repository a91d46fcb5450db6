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

Resilience: per-request timeouts, cut to the caller's deadline when a call has one; retries
with exponential backoff and jitter on connection errors, timeouts, 5xx and 429 (never on other
4xx: the same request would fail the same way); and a circuit breaker (closed -> open after
``breaker_failures`` consecutive failures -> half-open after ``breaker_reset_s`` -> one trial
request decides) that fails fast with :class:`CircuitOpenError` instead of piling requests onto
a server that is down.

This module deliberately does not import TensorFlow.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import orjson
import requests
from requests.utils import select_proxy

from serving.client_common import (
    RETRYABLE_STATUS,
    CircuitBreaker,
    CircuitOpenError,
    NoAvailableVersionError,
    PredictResult,
    ServingClientError,
    ServingHTTPError,
    ServingUnavailableError,
    attempt_timeout,
    retryable,
    scores_of,
    to_columns,
    with_retries,
)

# The client's errors and result type are part of its API: callers catch them from here.
__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "ModelClient",
    "NoAvailableVersionError",
    "PredictResult",
    "ServingClientError",
    "ServingHTTPError",
    "ServingUnavailableError",
]

T = TypeVar("T")

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


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
        self._local = threading.local()  # per thread: a Session and keep-alive connections
        self._version_lock = threading.Lock()
        self._resolved: tuple[str, float] | None = None  # (version, resolved at)
        self._sessions: list[requests.Session] = []
        self._connections: list[http.client.HTTPConnection] = []

    # --- plumbing ------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(_JSON_HEADERS)
            self._local.session = session
            with self._version_lock:
                self._sessions.append(session)
            self._local.connections = {}
            # Proxy/TLS settings from the environment, resolved once instead of on every call.
            self._local.send_kwargs = session.merge_environment_settings(
                self.base_url, {}, None, None, None
            )
        return session

    def _send(self, method: str, url: str, body: bytes | None, timeout_s: float) -> _Answer:
        """One HTTP exchange on this thread's keep-alive connections.

        Plain-HTTP, proxy-less URLs (the normal in-cluster and loopback case) go over one
        ``http.client`` connection per origin and thread: the per-call work of a Session, an
        adapter or a urllib3 pool (settings merge, Retry, Timeout and Response objects, header
        dicts) costs about as much as scoring a 256-row batch on a small machine. Anything else
        (TLS, proxies) takes the Session's adapter path.
        """
        session = self._session()
        origin, path = _split_url(url)
        conn = self._local.connections.get(origin, _UNSET)
        if conn is _UNSET:
            conn = None
            proxies = self._local.send_kwargs.get("proxies") or {}
            if url.startswith("http://") and select_proxy(url, proxies) is None:
                parts = urlsplit(origin)
                conn = _Connection(parts.hostname or "", parts.port or 80, timeout=timeout_s)
                with self._version_lock:
                    self._connections.append(conn)
            self._local.connections[origin] = conn
        if conn is not None:
            if conn.sock is not None and _dropped(conn.sock):
                conn.close()  # the server closed the idle connection: open a new one
            if conn.timeout != timeout_s:
                conn.timeout = timeout_s  # for the connection it opens
                if conn.sock is not None:
                    conn.sock.settimeout(timeout_s)
            try:
                conn.request(method, path, body=body, headers=_JSON_HEADERS)
                response = conn.getresponse()
                return _Answer(response.status, response.read())
            except TimeoutError as exc:
                conn.close()
                raise requests.Timeout(f"{type(exc).__name__}: {exc}") from exc
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise requests.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        request = requests.Request(method, url, data=body)
        response = session.get_adapter(url).send(
            session.prepare_request(request), timeout=timeout_s, **self._local.send_kwargs
        )
        return _Answer(response.status_code, response.content)

    def close(self) -> None:
        """Close every thread's connections (a later call opens new ones)."""
        with self._version_lock:
            sessions, self._sessions = self._sessions, []
            connections, self._connections = self._connections, []
        for session in sessions:
            session.close()
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _http(
        self, method: str, url: str, body: bytes | None = None, deadline: float | None = None
    ) -> Any:
        """One HTTP attempt through the breaker, within ``deadline`` if given. Returns the
        decoded JSON body."""
        timeout_s = attempt_timeout(self.timeout_s, deadline, f"{method} {url}")
        self.breaker.before_call(self.base_url)
        try:
            response = self._send(method, url, body, timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            self.breaker.record_failure()
            raise retryable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except Exception:
            # Whatever else went wrong, a half-open breaker must not stay waiting for a verdict.
            self.breaker.record_failure()
            raise
        if response.status_code in RETRYABLE_STATUS:
            self.breaker.record_failure()
            raise retryable(f"{method} {url}: HTTP {response.status_code}: {_error_text(response)}")
        # Any other answer, errors included, proves the server is up.
        self.breaker.record_success()
        if response.status_code != 200:
            raise ServingHTTPError(response.status_code, _error_text(response), url)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ServingClientError(f"{method} {url}: response is not JSON: {exc}") from exc

    def _with_retries(
        self, what: str, attempt_fn: Callable[[int], T], deadline: float | None = None
    ) -> T:
        return with_retries(
            what, attempt_fn, self.max_retries, self.backoff_s, self.backoff_max_s, deadline
        )

    def _spec_url(self) -> str:
        if self.version is not None:
            return f"{self._model_url}/versions/{self.version}"
        if self.label is not None:
            return f"{self._model_url}/labels/{quote(self.label, safe='')}"
        return self._model_url

    # --- version resolution --------------------------------------------------------------------

    def _resolve_version(self, force: bool = False, deadline: float | None = None) -> str:
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
        doc = self._http("GET", self._spec_url(), deadline=deadline)
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

    def current_version(self, *, deadline: float | None = None) -> str:
        """The version the next predict() will use (refreshing the cache if stale)."""
        return self._with_retries(
            "resolve version", lambda _: self._resolve_version(deadline=deadline), deadline
        )

    # --- public API ----------------------------------------------------------------------------

    def predict(
        self,
        rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        *,
        deadline: float | None = None,
    ) -> PredictResult:
        """Score one batch: rows as a list of dicts, or columns as a dict of lists/arrays.

        ``deadline`` (a ``time.monotonic()`` instant) bounds the whole call, retries included:
        each request's timeout is cut to the time left, and no retry starts after it.
        """
        columns, n_rows = to_columns(rows)
        payload: dict[str, Any] = {"inputs": columns}
        if self.signature_name:
            payload["signature_name"] = self.signature_name
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

        def attempt(n: int) -> PredictResult:
            version = self._resolve_version(deadline=deadline)
            url = f"{self._model_url}/versions/{version}:predict"
            started = time.perf_counter()
            try:
                doc = self._http("POST", url, body, deadline)
            except ServingHTTPError as exc:
                if exc.status_code != 404 or self.version is not None:
                    raise
                # The resolved version was unloaded (a newer one replaced it): a hot swap, not
                # a failure, so it costs no retry. Ask the server which version serves now.
                version = self._resolve_version(force=True, deadline=deadline)
                url = f"{self._model_url}/versions/{version}:predict"
                started = time.perf_counter()
                doc = self._http("POST", url, body, deadline)
            latency = time.perf_counter() - started
            outputs = doc.get("outputs") if isinstance(doc, dict) else None
            if outputs is None:
                raise ServingClientError(f"POST {url}: response has no 'outputs': {doc!r:.300}")
            scores = scores_of(outputs, self.output_key, n_rows, url)
            return PredictResult(scores, version, latency, n, outputs)

        return self._with_retries(f"predict on {self.model_name}", attempt, deadline)

    def status(self, *, deadline: float | None = None) -> dict[str, Any]:
        """GET /v1/models/{name}[/versions/{v}|/labels/{l}] (with retries)."""
        url = self._spec_url()
        return self._with_retries(
            "status", lambda _: self._http("GET", url, deadline=deadline), deadline
        )

    def metadata(self, *, deadline: float | None = None) -> dict[str, Any]:
        """GET .../metadata: model_spec and the SignatureDefMap (with retries)."""
        url = f"{self._spec_url()}/metadata"
        return self._with_retries(
            "metadata", lambda _: self._http("GET", url, deadline=deadline), deadline
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
                response = self._send("GET", self._spec_url(), None, self.timeout_s)
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


class _Connection(http.client.HTTPConnection):
    """A keep-alive connection that sends each request as soon as it is written."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection can no longer carry a request: it is readable, so
    the server closed it (end of file) or sent something unasked."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


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
