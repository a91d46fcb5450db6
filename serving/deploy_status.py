"""`fraud deploy status`: is the platform rolled out on Kubernetes, and which model is served?

Reports, as tables:
* the rollout state of the serving and consumer Deployments (desired / updated / ready /
  available replicas, conditions), judged the way ``kubectl rollout status`` judges it;
* the model version(s) each TF Serving pod has loaded, from TF Serving's model-status API
  (``GET /v1/models/<name>``), asked through the API server's pod proxy, so nothing has to be
  port-forwarded; or from one URL given with ``--serving-url``.

Everything that decides or formats is a pure function of Kubernetes client models and JSON
(tested offline); the functions that talk to a cluster are thin and at the bottom.

Exit status: 0 when both rollouts are complete and every serving pod has an AVAILABLE
version, 1 otherwise (so CI and scripts can gate on it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_SERVING_DEPLOYMENT = "fraud-serving"
DEFAULT_CONSUMER_DEPLOYMENT = "fraud-consumer"
TF_SERVING_REST_PORT = 8501
# The condition reason Kubernetes sets when a rollout exceeded progressDeadlineSeconds.
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


# --- pure part: decide and format ------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class RolloutState:
    name: str
    found: bool
    desired: int = 0
    current: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    images: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    summary: str = ""
    complete: bool = False


@dataclass(frozen=True)
class ModelVersion:
    version: str
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class ServedModel:
    """What one TF Serving endpoint (a pod, or the --serving-url) reports for the model."""

    source: str
    versions: tuple[ModelVersion, ...] = ()
    error: str = ""

    @property
    def available(self) -> bool:
        return any(v.state == "AVAILABLE" for v in self.versions)


def _int(value: int | None) -> int:
    return int(value or 0)


def rollout_state(deployment: Any) -> RolloutState:
    """Rollout state of a ``V1Deployment``, with kubectl's ``rollout status`` verdict."""
    meta, spec, status = deployment.metadata, deployment.spec, deployment.status
    desired = 1 if spec.replicas is None else int(spec.replicas)
    current = _int(status.replicas) if status else 0
    updated = _int(status.updated_replicas) if status else 0
    ready = _int(status.ready_replicas) if status else 0
    available = _int(status.available_replicas) if status else 0
    observed = _int(status.observed_generation) if status else 0
    conditions = tuple(
        Condition(c.type, c.status, c.reason or "", c.message or "")
        for c in ((status.conditions if status else None) or [])
    )
    images = tuple(c.image for c in spec.template.spec.containers)

    # Same order of checks as kubectl's DeploymentStatusViewer.
    complete = False
    if spec.paused:
        summary = "paused"
    elif _int(meta.generation) > observed:
        summary = "waiting: new spec not yet observed by the controller"
    elif any(
        c.type == "Progressing" and c.reason == PROGRESS_DEADLINE_EXCEEDED for c in conditions
    ):
        summary = "failed: progress deadline exceeded"
    elif updated < desired:
        summary = f"progressing: {updated} of {desired} replicas updated"
    elif current > updated:
        summary = f"progressing: {current - updated} old replicas pending termination"
    elif available < updated:
        summary = f"progressing: {available} of {updated} updated replicas available"
    else:
        complete = True
        summary = "complete" if desired else "complete (scaled to zero)"
    return RolloutState(
        name=meta.name,
        found=True,
        desired=desired,
        current=current,
        updated=updated,
        ready=ready,
        available=available,
        images=images,
        conditions=conditions,
        summary=summary,
        complete=complete,
    )


def missing_deployment(name: str) -> RolloutState:
    return RolloutState(name=name, found=False, summary="not found")


def model_versions(status: dict[str, Any]) -> tuple[ModelVersion, ...]:
    """Parse TF Serving's GetModelStatus JSON; newest version first."""
    versions = []
    for entry in status.get("model_version_status") or []:
        err = entry.get("status") or {}
        versions.append(
            ModelVersion(
                version=str(entry.get("version", "")),
                state=str(entry.get("state", "UNKNOWN")),
                # TF Serving omits error_code when it is OK (proto3 default value).
                error_code=str(err.get("error_code") or "OK"),
                error_message=str(err.get("error_message") or ""),
            )
        )
    return tuple(sorted(versions, key=_version_key, reverse=True))


def _version_key(v: ModelVersion) -> tuple[int, str]:
    return (int(v.version), "") if v.version.isdigit() else (-1, v.version)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, like kubectl's tables."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [list(headers), *text_rows]
    ]
    return "\n".join(lines)


def healthy(rollouts: Sequence[RolloutState], served: Sequence[ServedModel]) -> bool:
    return (
        all(r.complete for r in rollouts)
        and bool(served)
        and all(s.available and not s.error for s in served)
    )


def render_report(
    namespace: str,
    model_name: str,
    rollouts: Sequence[RolloutState],
    served: Sequence[ServedModel],
) -> str:
    deployments = format_table(
        ("DEPLOYMENT", "DESIRED", "CURRENT", "UPDATED", "READY", "AVAILABLE", "ROLLOUT"),
        (
            (r.name, r.desired, r.current, r.updated, r.ready, r.available, r.summary)
            if r.found
            else (r.name, "-", "-", "-", "-", "-", r.summary)
            for r in rollouts
        ),
    )
    conditions = format_table(
        ("DEPLOYMENT", "CONDITION", "STATUS", "REASON", "IMAGE"),
        (
            (r.name, c.type, c.status, c.reason, ", ".join(r.images))
            for r in rollouts
            for c in r.conditions
        ),
    )
    model_rows: list[tuple[str, ...]] = []
    for s in served:
        if s.error:
            model_rows.append((s.source, "-", "ERROR", s.error))
        elif not s.versions:
            model_rows.append((s.source, "-", "NONE", "no version loaded"))
        for v in s.versions:
            detail = v.error_code if not v.error_message else f"{v.error_code}: {v.error_message}"
            model_rows.append((s.source, v.version, v.state, detail))
    if not model_rows:
        model_rows.append(("-", "-", "NONE", "no serving pod to ask"))
    models = format_table(("SERVED BY", "VERSION", "STATE", "STATUS"), model_rows)
    verdict = "healthy" if healthy(rollouts, served) else "NOT healthy"
    return (
        f"namespace {namespace}, model {model_name!r}: {verdict}\n\n"
        f"{deployments}\n\n{conditions}\n\n{models}\n"
    )


def report_json(
    namespace: str,
    model_name: str,
    rollouts: Sequence[RolloutState],
    served: Sequence[ServedModel],
) -> str:
    return json.dumps(
        {
            "namespace": namespace,
            "model": model_name,
            "healthy": healthy(rollouts, served),
            "deployments": [asdict(r) for r in rollouts],
            "served": [asdict(s) | {"available": s.available} for s in served],
        },
        indent=2,
    )


def error_text(body: bytes | str | None, fallback: str) -> str:
    """TF Serving answers errors as {"error": "..."}; anything else is shown as is, shortened."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("error"):
            return str(parsed["error"])
        return body.strip()[:200]
    return fallback


# --- thin cluster part ------------------------------------------------------------------------


def load_cluster_config(context: str | None) -> str | None:
    """Load in-cluster config inside a pod, the kubeconfig otherwise; return its namespace."""
    from kubernetes import config

    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()
            with open(IN_CLUSTER_NAMESPACE_FILE, encoding="utf-8") as f:
                return f.read().strip() or None
        except (config.ConfigException, OSError):
            pass  # not really a pod (just the variable): fall back to the kubeconfig
    try:
        config.load_kube_config(context=context)
        _, active = config.list_kube_config_contexts()
    except config.ConfigException as err:
        raise ValueError(f"no usable Kubernetes configuration: {err}") from err
    if context is not None:
        contexts, _ = config.list_kube_config_contexts()
        active = next((c for c in contexts if c["name"] == context), active)
    return (active or {}).get("context", {}).get("namespace")


def fetch_rollouts(apps: Any, namespace: str, names: Sequence[str]) -> list[RolloutState]:
    from kubernetes.client.exceptions import ApiException

    states = []
    for name in names:
        try:
            states.append(rollout_state(apps.read_namespaced_deployment(name, namespace)))
        except ApiException as err:
            if err.status != 404:
                raise
            states.append(missing_deployment(name))
    return states


def fetch_served_via_pods(
    core: Any, deployment: Any, namespace: str, model_name: str, timeout: float
) -> list[ServedModel]:
    """Ask every running pod of the serving Deployment, through the API server's pod proxy.

    Per pod rather than through the Service: during a model or image rollout the replicas can
    serve different versions, and that is exactly what this command should show.
    """
    from kubernetes.client.exceptions import ApiException

    labels = deployment.spec.selector.match_labels or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    served = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        name = pod.metadata.name
        if pod.status.phase != "Running":
            served.append(ServedModel(name, error=f"pod is {pod.status.phase}"))
            continue
        # call_api directly: the generated *_proxy_with_path methods URL-encode the '/' of
        # the proxied path and return bodies as Python reprs instead of JSON.
        path = f"/api/v1/namespaces/{namespace}/pods/{name}:{TF_SERVING_REST_PORT}/proxy/v1/models/{model_name}"
        try:
            response = core.api_client.call_api(
                path,
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
            served.append(ServedModel(name, model_versions(json.loads(response.data))))
        except ApiException as err:
            served.append(ServedModel(name, error=error_text(err.body, f"HTTP {err.status}")))
    return served


def fetch_served_via_url(serving_url: str, model_name: str, timeout: float) -> ServedModel:
    url = f"{serving_url.rstrip('/')}/v1/models/{model_name}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return ServedModel(serving_url, model_versions(json.load(response)))
    except urllib.error.HTTPError as err:
        return ServedModel(serving_url, error=error_text(err.read(), f"HTTP {err.code}"))
    except (urllib.error.URLError, OSError) as err:
        return ServedModel(serving_url, error=f"unreachable: {getattr(err, 'reason', err)}")


def collect(args: argparse.Namespace, model_name: str) -> tuple[str, list, list]:
    from kubernetes import client
    from urllib3.exceptions import HTTPError as Urllib3Error

    context_namespace = load_cluster_config(args.context)
    namespace = args.namespace or context_namespace or "default"
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    names = (args.serving_deployment, args.consumer_deployment)
    try:
        rollouts = fetch_rollouts(apps, namespace, names)
        if args.serving_url:
            served = [fetch_served_via_url(args.serving_url, model_name, args.timeout)]
        elif rollouts[0].found:
            serving = apps.read_namespaced_deployment(args.serving_deployment, namespace)
            served = fetch_served_via_pods(core, serving, namespace, model_name, args.timeout)
        else:
            served = []
    except Urllib3Error as err:
        host = client.Configuration.get_default_copy().host
        raise ValueError(f"cannot reach the Kubernetes API at {host}: {err}") from err
    return namespace, rollouts, served


def _status_command(args: argparse.Namespace, settings: Any = None) -> int:
    from kubernetes.client.exceptions import ApiException

    model_name = args.model_name or getattr(settings, "model_name", None) or "fraud"
    try:
        namespace, rollouts, served = collect(args, model_name)
    except ApiException as err:
        # 401/403 and friends: one clear line through the CLI's ValueError handling.
        raise ValueError(f"Kubernetes API refused: {err.status} {err.reason}") from err
    if args.output == "json":
        print(report_json(namespace, model_name, rollouts, served))
    else:
        print(render_report(namespace, model_name, rollouts, served), end="")
    return 0 if healthy(rollouts, served) else 1


def add_subcommands(subparsers: Any) -> None:
    """Register ``deploy status`` on the ``fraud`` CLI's top-level subparsers."""
    deploy = subparsers.add_parser("deploy", help="inspect the platform's Kubernetes deployment")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)
    status = deploy_sub.add_parser(
        "status",
        help="rollout state of serving and consumer, and the model versions served",
        description=(
            "Rollout state of the serving and consumer Deployments and the model version(s) "
            "each TF Serving pod has loaded. Uses the in-cluster config inside a pod, the "
            "kubeconfig otherwise. Exit status 1 when anything is not healthy."
        ),
    )
    status.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, else 'default')"
    )
    status.add_argument("--context", help="kubeconfig context to use")
    status.add_argument("--serving-deployment", default=DEFAULT_SERVING_DEPLOYMENT)
    status.add_argument("--consumer-deployment", default=DEFAULT_CONSUMER_DEPLOYMENT)
    status.add_argument("--model-name", help="served model name (default: FRAUD_MODEL_NAME)")
    status.add_argument(
        "--serving-url",
        help=(
            "ask this TF Serving URL instead of each pod through the API server, e.g. "
            "http://127.0.0.1:8501 after `kubectl port-forward svc/fraud-serving 8501`"
        ),
    )
    status.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=_status_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.deploy_status status ...``, usable before the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="python -m serving.deploy_status")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(["deploy", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args, None)
    except ValueError as err:
        print(f"fraud deploy status: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
