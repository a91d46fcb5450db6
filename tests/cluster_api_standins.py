"""Protocol-level stand-ins for the two cluster APIs a drift-triggered retrain calls: the KFP
API server (v2beta1 REST) and the Kubernetes API's Leases (coordination.k8s.io/v1).

They speak real HTTP to the real clients (``kfp.Client``, ``kubernetes.client``) and are strict
where a wrong call would fail on a cluster: a bearer token on every request, no unknown body
field or query parameter, run parameters checked against the submitted pipeline spec's inputs
(names, types, required ones), an existing experiment, and for Leases the API server's
optimistic concurrency (a stale ``resourceVersion`` gets 409 Conflict, as does creating an
existing Lease). Anything else gets 404, so an unexpected call fails the test.

Not a KFP backend: no run is executed, and only the calls below exist.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KFP = "/apis/v2beta1"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/"

_EXPERIMENT_FIELDS = {"display_name", "description", "namespace"}
_RUN_FIELDS = {
    "experiment_id",
    "display_name",
    "description",
    "pipeline_spec",
    "pipeline_version_reference",
    "runtime_config",
    "service_account",
}
_RUNTIME_FIELDS = {"parameters", "pipeline_root"}
_LIST_QUERY = {"page_token", "page_size", "sort_by", "filter", "namespace", "experiment_id"}
_LEASE_SPEC_FIELDS = {
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "preferredHolder",
    "strategy",
}
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unknown(what: str, got: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{what}: unknown field(s) {extra}")


def _display_name_filter(query: dict[str, list[str]]) -> str | None:
    """The display name an EQUALS filter asks for; None without a filter."""
    _unknown("list query", query, _LIST_QUERY)
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates", [])
    if len(predicates) != 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"filter: one predicate expected: {predicates}")
    (p,) = predicates
    _unknown("filter predicate", p, {"operation", "key", "stringValue", "string_value"})
    if p.get("operation") not in ("EQUALS", 1) or p.get("key") != "display_name":
        raise ApiError(HTTPStatus.BAD_REQUEST, f"filter: only display_name EQUALS here: {p}")
    return p.get("stringValue", p.get("string_value"))


def _check_parameters(spec: dict[str, Any], parameters: dict[str, Any]) -> None:
    """What the KFP backend checks of runtime parameters against the pipeline's root inputs."""
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    _unknown("runtime_config.parameters", parameters, set(declared))
    for name, decl in declared.items():
        if name not in parameters:
            if not decl.get("isOptional") and "defaultValue" not in decl:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {name} is required")
            continue
        kind, value = decl.get("parameterType"), parameters[name]
        ok = isinstance(value, _PARAMETER_TYPES[kind])
        if kind in ("NUMBER_INTEGER", "NUMBER_DOUBLE") and isinstance(value, bool):
            ok = False
        if not ok:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {name}: {value!r} is not {kind}")


class ClusterApis:
    """The state behind both stand-ins; ``runs`` and ``leases`` are what tests look at."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.experiments: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._version = 0

    # -- KFP -----------------------------------------------------------------------------------
    def kfp(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        route = (method, path)
        if route == ("GET", f"{KFP}/healthz"):
            return {"multi_user": False, "commit_sha": "stand-in", "tag_name": "2.4.0"}
        if route == ("GET", f"{KFP}/experiments"):
            name = _display_name_filter(query)
            found = [e for e in self.experiments if name in (None, e["display_name"])]
            return {"experiments": found, "total_size": len(found)}
        if route == ("POST", f"{KFP}/experiments"):
            return self._create_experiment(body)
        if route == ("GET", f"{KFP}/runs"):
            name = _display_name_filter(query)
            found = [r for r in self.runs if name in (None, r["display_name"])]
            return {"runs": found, "total_size": len(found)}
        if route == ("POST", f"{KFP}/runs"):
            return self._create_run(body)
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such KFP call here: {method} {path}")

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        _unknown("experiment", body, _EXPERIMENT_FIELDS)
        name = body.get("display_name")
        if not name:
            raise ApiError(HTTPStatus.BAD_REQUEST, "experiment: display_name is required")
        if any(e["display_name"] == name for e in self.experiments):
            raise ApiError(HTTPStatus.CONFLICT, f"experiment {name} already exists")
        experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": _now()}
        experiment["storage_state"] = "AVAILABLE"
        self.experiments.append(experiment)
        return experiment

    def _create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        _unknown("run", body, _RUN_FIELDS)
        if not body.get("display_name"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "run: display_name is required")
        if not any(e["experiment_id"] == body.get("experiment_id") for e in self.experiments):
            raise ApiError(HTTPStatus.NOT_FOUND, f"run: no experiment {body.get('experiment_id')}")
        spec = body.get("pipeline_spec")
        if not isinstance(spec, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "run: pipeline_spec (the compiled IR) missing")
        spec = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} with kfp-kubernetes
        if "root" not in spec or "pipelineInfo" not in spec:
            raise ApiError(HTTPStatus.BAD_REQUEST, "run: pipeline_spec is not a PipelineSpec")
        runtime = body.get("runtime_config") or {}
        _unknown("runtime_config", runtime, _RUNTIME_FIELDS)
        _check_parameters(spec, runtime.get("parameters") or {})
        run = {**body, "run_id": str(uuid.uuid4()), "created_at": _now(), "state": "PENDING"}
        run["storage_state"] = "AVAILABLE"
        self.runs.append(run)
        return run

    # -- Leases --------------------------------------------------------------------------------
    def lease(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        parts = path[len(LEASES) :].split("/")
        if len(parts) not in (2, 3) or parts[1] != "leases":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such Kubernetes call here: {path}")
        _unknown("query", query, set())
        namespace, name = parts[0], parts[2] if len(parts) == 3 else None
        if method == "GET" and name:
            if (namespace, name) not in self.leases:
                raise ApiError(HTTPStatus.NOT_FOUND, f'leases "{name}" not found')
            return self.leases[(namespace, name)]
        if method == "POST" and name is None:
            return self._store(namespace, self._checked_lease(body, None), create=True)
        if method == "PUT" and name:
            return self._store(namespace, self._checked_lease(body, name), create=False)
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path}")

    def _checked_lease(self, body: dict[str, Any], name: str | None) -> dict[str, Any]:
        _unknown("Lease", body, {"apiVersion", "kind", "metadata", "spec"})
        if body.get("kind", "Lease") != "Lease":
            raise ApiError(HTTPStatus.BAD_REQUEST, f"kind {body['kind']} is not Lease")
        meta = body.get("metadata") or {}
        if not meta.get("name") or (name is not None and meta["name"] != name):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"metadata.name {meta.get('name')!r}")
        _unknown("Lease spec", body.get("spec") or {}, _LEASE_SPEC_FIELDS)
        return body

    def _store(self, namespace: str, body: dict[str, Any], create: bool) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        current = self.leases.get(key)
        if create and current is not None:
            raise ApiError(HTTPStatus.CONFLICT, f'leases "{key[1]}" already exists')
        if not create:
            if current is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f'leases "{key[1]}" not found')
            sent = body["metadata"].get("resourceVersion")
            if sent != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    HTTPStatus.CONFLICT,
                    f'Operation cannot be fulfilled on leases "{key[1]}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
        self._version += 1
        stored = json.loads(json.dumps(body))
        stored.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        stored["metadata"].update(namespace=namespace, resourceVersion=str(self._version))
        self.leases[key] = stored
        return stored


def _handler(apis: ClusterApis) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            try:
                if self.headers.get("Authorization") != f"Bearer {apis.token}":
                    raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with apis.lock:
                    apis.requests.append((method, url.path))
                    if url.path.startswith(KFP):
                        answer = apis.kfp(method, url.path, query, body)
                    elif url.path.startswith(LEASES):
                        answer = apis.lease(method, url.path, query, body)
                    else:
                        raise ApiError(HTTPStatus.NOT_FOUND, f"no such path: {url.path}")
                status = HTTPStatus.OK
            except ApiError as err:
                status, answer = err.status, {"error": str(err), "message": str(err)}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

    return Handler


class ClusterApiServer:
    """Both stand-ins on one loopback port, in a thread; a context manager."""

    def __init__(self, token: str) -> None:
        self.apis = ClusterApis(token)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.apis))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ClusterApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
