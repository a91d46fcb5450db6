"""One retraining run per drift event across consumer replicas: a Kubernetes Lease as the claim.

Each consumer replica monitors drift on its own partitions, so a drift of the whole stream is
detected by every replica, each in its own windows (their onsets, hence their ``as_of``, differ by
a window or so). Before submitting, a replica claims the event on one Lease
(``coordination.k8s.io/v1``) through the API server's optimistic concurrency: it reads the Lease,
and writes its claim with the ``resourceVersion`` it read. Two replicas writing at once cannot
both succeed (the second gets 409 Conflict, reads again and sees the first claim), so exactly one
submits. This holds on any real cluster, whatever the storage behind the consumers' state.

The Lease keeps the ``as_of`` and the KFP run name of the last claimed event in annotations.
A drift event whose ``as_of`` is earlier than that one plus ``span_s`` (event time) is the same
event (or an older one): refused, with the run that covers it.

The run's KFP display name is derived from ``as_of`` (``drift_run_name``), so that the replica
that won can also check, before creating the run, that an earlier attempt did not create it
already (``app.retrain_cli.ClusterRunner`` with ``dedupe``).

Not covered: a winner that dies between the claim and the submission leaves the event claimed
and not submitted; the next drift event after ``span_s`` retrains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitoring.retrain_config import RetrainJob, Runner

__all__ = [
    "ANNOTATION_AS_OF",
    "ANNOTATION_RUN",
    "Claim",
    "ClaimedRunner",
    "LeaseClaim",
    "drift_run_name",
    "in_cluster_namespace",
]

ANNOTATION_AS_OF = "fraud.platform/retrain-as-of"
ANNOTATION_RUN = "fraud.platform/retrain-run-name"
RUN_NAME_PREFIX = "fraud-retrain"
# Where Kubernetes puts the pod's namespace in a ServiceAccount volume (projected or automounted).
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_ATTEMPTS = 5


def _utc(text: str) -> datetime:
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except ValueError as err:
        raise ValueError(f"retrain claim: as_of {text!r} is not a timestamp") from err
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def drift_run_name(as_of: str) -> str:
    """The KFP display name of the retrain whose windows end at ``as_of``."""
    return f"{RUN_NAME_PREFIX}-{_utc(as_of).strftime('%Y%m%dt%H%M%Sz')}"


def in_cluster_namespace(path: Path = NAMESPACE_FILE) -> str:
    """The pod's namespace, as Kubernetes writes it into the ServiceAccount volume."""
    try:
        return path.read_text().strip()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{path}: no namespace file (mount the ServiceAccount token volume, or give the "
            "Lease namespace)"
        ) from err


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: who holds the event and which run covers it."""

    won: bool
    as_of: str
    run_name: str
    holder: str


class LeaseClaim:
    """Claims drift events on the Lease ``name`` in ``namespace`` for ``holder`` (the pod).

    ``api`` is a ``kubernetes.client.CoordinationV1Api``; ``span_s``: drift events with an
    ``as_of`` less than this after the claimed one are the same event.
    """

    def __init__(self, api: Any, namespace: str, name: str, holder: str, span_s: float) -> None:
        if span_s <= 0:
            raise ValueError(f"retrain claim: the span must be > 0 s, got {span_s}")
        if not (namespace and name and holder):
            raise ValueError(
                f"retrain claim: namespace {namespace!r}, Lease name {name!r} and holder "
                f"{holder!r} must all be set"
            )
        self.api = api
        self.namespace = namespace
        self.name = name
        self.holder = holder
        self.span_s = span_s

    @classmethod
    def in_cluster(
        cls, name: str, holder: str, span_s: float, namespace: str | None = None
    ) -> LeaseClaim:
        """With the pod's ServiceAccount token (``kubernetes.config.load_incluster_config``)."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException as err:
            raise RuntimeError(
                f"retrain claim on Lease {name}: no in-cluster Kubernetes API credentials "
                f"({err}); mount the ServiceAccount token, CA and namespace (docs/deployment.md)"
            ) from err
        return cls(
            client.CoordinationV1Api(),
            namespace or in_cluster_namespace(),
            name,
            holder,
            span_s,
        )

    def claim(self, as_of: str) -> Claim:
        """Claim the drift event retrained at ``as_of``, or say which run already covers it."""
        from kubernetes.client.exceptions import ApiException

        wanted = _utc(as_of)
        for _ in range(_ATTEMPTS):
            lease = self._read()
            held = self._covering(lease, wanted)
            if held is not None:
                return held
            try:
                return self._write(lease, as_of)
            except ApiException as err:
                # 409: another replica wrote between our read and write; read its claim.
                if err.status != 409:
                    raise self._error("write", err) from err
        raise RuntimeError(
            f"retrain claim: Lease {self.namespace}/{self.name} changed under each of "
            f"{_ATTEMPTS} attempts to claim as_of {as_of}"
        )

    def _read(self) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise self._error("read", err) from err

    def _covering(self, lease: Any | None, wanted: datetime) -> Claim | None:
        """The claim on the Lease when it covers ``wanted``; None when ``wanted`` is new."""
        annotations: Mapping[str, str] = (lease.metadata.annotations or {}) if lease else {}
        claimed = annotations.get(ANNOTATION_AS_OF)
        if not claimed:
            return None
        if (wanted - _utc(claimed)).total_seconds() >= self.span_s:
            return None
        return Claim(
            won=False,
            as_of=claimed,
            run_name=annotations.get(ANNOTATION_RUN) or drift_run_name(claimed),
            holder=lease.spec.holder_identity or "",
        )

    def _write(self, lease: Any | None, as_of: str) -> Claim:
        from kubernetes import client

        now = datetime.now(UTC)
        run_name = drift_run_name(as_of)
        annotations = {ANNOTATION_AS_OF: as_of, ANNOTATION_RUN: run_name}
        spec = client.V1LeaseSpec(holder_identity=self.holder, acquire_time=now, renew_time=now)
        if lease is None:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, annotations=annotations), spec=spec
            )
            self.api.create_namespaced_lease(self.namespace, body)
        else:
            lease.metadata.annotations = {**(lease.metadata.annotations or {}), **annotations}
            transitions = lease.spec.lease_transitions or 0
            spec.lease_transitions = transitions + (lease.spec.holder_identity != self.holder)
            lease.spec = spec
            # The resourceVersion read stays on the body: the API server refuses a stale one.
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        return Claim(won=True, as_of=as_of, run_name=run_name, holder=self.holder)

    def _error(self, what: str, err: Any) -> RuntimeError:
        return RuntimeError(
            f"retrain claim: cannot {what} Lease {self.namespace}/{self.name} as "
            f"{self.holder}: HTTP {err.status} {err.reason}"
        )


class ClaimedRunner:
    """``runner`` for the replica that claims the job's drift event; the others get a
    ``duplicate_of`` result naming the run that covers it (the trigger's ``duplicate``)."""

    def __init__(self, runner: Runner, claim: LeaseClaim) -> None:
        self.runner = runner
        self.claim = claim

    def __call__(self, job: RetrainJob) -> Mapping[str, Any]:
        as_of = job.params.get("as_of")
        if not as_of:
            raise ValueError(
                f"retrain {job.run_id}: a claimed run needs relative windows ending at an "
                "as_of (explicit train/eval dates name no drift event)"
            )
        claim = self.claim.claim(str(as_of))
        if not claim.won:
            return {"pushed": None, "duplicate_of": claim.run_name, "claimed_by": claim.holder}
        return self.runner(job)
