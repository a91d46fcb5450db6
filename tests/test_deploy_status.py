"""`fraud deploy status` (serving/deploy_status.py) without a cluster.

The Deployments are the real manifests of k8s/base, turned into the kubernetes client's
V1Deployment objects by the client's own deserializer, with the status an API server would
report at each stage of a rollout. The model-status JSON has the shape TF Serving's
GET /v1/models/<name> returns. The cluster calls themselves are thin (see the module) and are
exercised only against a real cluster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient

from serving import deploy_status as ds

ROOT = Path(__file__).resolve().parents[1]


class _Response:
    def __init__(self, obj: dict) -> None:
        self.data = json.dumps(obj)


def deployment(path: str, status: dict | None = None, generation: int = 3, **spec):
    """A V1Deployment from a manifest of k8s/base, as the API would return it."""
    obj = yaml.safe_load((ROOT / "k8s/base" / path).read_text())
    obj["metadata"]["generation"] = generation
    obj["spec"].update(spec)
    if status is not None:
        obj["status"] = status
    return ApiClient().deserialize(_Response(obj), "V1Deployment")


def status(replicas, updated, ready, available, observed=3, conditions=()):
    return {
        "observedGeneration": observed,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conditions
        ],
    }


DONE = (
    ("Available", "True", "MinimumReplicasAvailable"),
    ("Progressing", "True", "NewReplicaSetAvailable"),
)


@pytest.mark.parametrize(
    ("dep_status", "spec", "summary", "complete"),
    [
        (status(2, 2, 2, 2, conditions=DONE), {}, "complete", True),
        (status(3, 1, 2, 2), {}, "progressing: 1 of 2 replicas updated", False),
        (status(3, 2, 2, 2), {}, "progressing: 1 old replicas pending termination", False),
        (status(2, 2, 1, 1), {}, "progressing: 1 of 2 updated replicas available", False),
        (
            status(2, 2, 2, 2, observed=2),
            {},
            "waiting: new spec not yet observed by the controller",
            False,
        ),
        (
            status(3, 1, 2, 2, conditions=[("Progressing", "False", "ProgressDeadlineExceeded")]),
            {},
            "failed: progress deadline exceeded",
            False,
        ),
        (status(2, 2, 2, 2), {"paused": True}, "paused", False),
        (status(0, 0, 0, 0), {"replicas": 0}, "complete (scaled to zero)", True),
        (None, {}, "waiting: new spec not yet observed by the controller", False),
    ],
)
def test_rollout_state_follows_kubectl(dep_status, spec, summary, complete) -> None:
    state = ds.rollout_state(deployment("serving/deployment.yaml", dep_status, **spec))
    assert (state.summary, state.complete) == (summary, complete)
    assert state.name == "fraud-serving"
    assert state.images == ("tensorflow/serving:2.16.1",)


def test_rollout_state_counts_and_conditions() -> None:
    dep = deployment("consumer/deployment.yaml", status(3, 2, 1, 1, conditions=DONE))
    state = ds.rollout_state(dep)
    assert (state.desired, state.current, state.updated, state.ready, state.available) == (
        2,
        3,
        2,
        1,
        1,
    )
    assert state.conditions[1] == ds.Condition(
        "Progressing", "True", "NewReplicaSetAvailable", "Progressing NewReplicaSetAvailable"
    )
    assert state.images == ("fraud-platform",)


TF_STATUS = {
    "model_version_status": [
        {"version": "2", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "10", "state": "AVAILABLE", "status": {"error_message": ""}},
        {
            "version": "11",
            "state": "LOADING",
            "status": {"error_code": "UNKNOWN", "error_message": "warm-up"},
        },
    ]
}


def test_model_versions_parse_tf_serving_status_newest_first() -> None:
    versions = ds.model_versions(TF_STATUS)
    assert [v.version for v in versions] == ["11", "10", "2"]
    assert versions[1] == ds.ModelVersion("10", "AVAILABLE", "OK", "")
    assert versions[0].error_message == "warm-up"
    assert ds.model_versions({}) == ()


def test_healthy_needs_complete_rollouts_and_an_available_version_everywhere() -> None:
    done = ds.rollout_state(deployment("serving/deployment.yaml", status(2, 2, 2, 2)))
    rolling = ds.rollout_state(deployment("serving/deployment.yaml", status(2, 1, 2, 2)))
    ok = ds.ServedModel("pod-a", ds.model_versions(TF_STATUS))
    loading = ds.ServedModel("pod-b", (ds.ModelVersion("3", "LOADING"),))
    assert ds.healthy([done, done], [ok, ok])
    assert not ds.healthy([done, rolling], [ok])
    assert not ds.healthy([done], [ok, loading])
    assert not ds.healthy([done], [ds.ServedModel("pod-c", error="connection refused")])
    assert not ds.healthy([done], [])
    assert not ds.healthy([ds.missing_deployment("fraud-consumer")], [ok])


def test_report_table() -> None:
    serving = ds.rollout_state(
        deployment("serving/deployment.yaml", status(2, 2, 2, 2, conditions=DONE))
    )
    consumer = ds.missing_deployment("fraud-consumer")
    served = [
        ds.ServedModel("fraud-serving-7d9-abc", ds.model_versions(TF_STATUS)),
        ds.ServedModel("fraud-serving-7d9-def", error="Could not find any versions of model fraud"),
    ]
    text = ds.render_report("fraud-prod", "fraud", [serving, consumer], served)
    lines = text.splitlines()
    assert lines[0] == "namespace fraud-prod, model 'fraud': NOT healthy"
    assert lines[2].split() == [
        "DEPLOYMENT",
        "DESIRED",
        "CURRENT",
        "UPDATED",
        "READY",
        "AVAILABLE",
        "ROLLOUT",
    ]
    assert lines[3].split() == ["fraud-serving", "2", "2", "2", "2", "2", "complete"]
    assert lines[4].split() == ["fraud-consumer", "-", "-", "-", "-", "-", "not", "found"]
    # Columns line up: every row of a table starts its second column at the same offset.
    assert lines[3].index("2") == lines[2].index("DESIRED")
    assert "fraud-serving-7d9-abc  11       LOADING    UNKNOWN: warm-up" in text
    assert "fraud-serving-7d9-abc  10       AVAILABLE  OK" in text
    assert "fraud-serving-7d9-def  -        ERROR      Could not find any versions" in text
    condition_rows = [line.split() for line in lines if "MinimumReplicasAvailable" in line]
    assert condition_rows == [
        [
            "fraud-serving",
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "tensorflow/serving:2.16.1",
        ]
    ]


def test_report_json_is_machine_readable() -> None:
    serving = ds.rollout_state(deployment("serving/deployment.yaml", status(2, 2, 2, 2)))
    consumer = ds.rollout_state(deployment("consumer/deployment.yaml", status(2, 2, 2, 2)))
    served = [ds.ServedModel("pod-a", ds.model_versions(TF_STATUS))]
    report = json.loads(ds.report_json("fraud-dev", "fraud", [serving, consumer], served))
    assert report["healthy"] is True
    assert [d["summary"] for d in report["deployments"]] == ["complete", "complete"]
    assert report["served"][0]["available"] is True
    assert report["served"][0]["versions"][1]["state"] == "AVAILABLE"


def test_error_text_prefers_tf_serving_error_field() -> None:
    body = b'{ "error": "Servable not found for request: Latest(fraud)" }'
    assert ds.error_text(body, "HTTP 404") == "Servable not found for request: Latest(fraud)"
    assert ds.error_text(b"", "HTTP 503") == "HTTP 503"
    assert ds.error_text("<html>bad gateway</html>", "HTTP 502") == "<html>bad gateway</html>"


def test_cli_registration() -> None:
    parser = argparse.ArgumentParser(prog="fraud")
    sub = parser.add_subparsers(dest="command", required=True)
    ds.add_subcommands(sub)
    args = parser.parse_args(["deploy", "status", "-n", "fraud-prod", "-o", "json"])
    assert args.func is ds._status_command
    assert (args.namespace, args.output, args.serving_deployment, args.consumer_deployment) == (
        "fraud-prod",
        "json",
        "fraud-serving",
        "fraud-consumer",
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["deploy"])


def test_no_kubeconfig_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no usable Kubernetes configuration"):
        ds.load_cluster_config(None)


@pytest.mark.slow
def test_served_versions_from_the_embedded_tf_serving(tmp_path, model_store) -> None:
    """The --serving-url path against a real TF Serving-compatible server, started with the
    monitoring config the Kubernetes base and docker-compose mount."""
    import requests
    from serving_fixtures import ServerProcess
    from stream_fixtures import install_version, wait_for

    base = tmp_path / "models" / "fraud"
    install_version(model_store.example, base, 2)
    monitoring = ROOT / "k8s/base/serving/monitoring.config"
    args = [
        "--model_name=fraud",
        f"--model_base_path={base}",
        f"--monitoring_config_file={monitoring}",
        "--file_system_poll_wait_seconds=0.2",
    ]
    with ServerProcess(args) as server:

        def available():
            served = ds.fetch_served_via_url(server.url, "fraud", timeout=5)
            return served if served.available else None

        served = wait_for(available, what="version 2 AVAILABLE")
        assert served.versions == (ds.ModelVersion("2", "AVAILABLE", "OK", ""),)
        assert ds.healthy([], [served])

        other = ds.fetch_served_via_url(server.url, "no-such-model", timeout=5)
        assert other.error and not other.versions and not other.available

        # The path set in monitoring.config serves Prometheus text, with the version gauge.
        metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'serving_model_version_available{model_name="fraud",version="2"} 1.0' in (
            metrics.text
        )
        url = server.url
    down = ds.fetch_served_via_url(url, "fraud", timeout=2)
    assert down.error.startswith("unreachable") and not down.available
