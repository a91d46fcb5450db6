"""Drift-triggered retraining in cluster mode, through the real clients over real HTTP.

``kfp.Client`` (with ``ServiceAccountTokenVolumeCredentials`` reading a token file) and the
``kubernetes`` client talk to protocol-level stand-ins of the KFP API server and of the
Kubernetes Leases API (tests/cluster_api_standins.py), which check what a cluster would: the
bearer token, every field of every body, the run's parameters against the compiled pipeline's
inputs, and the API server's optimistic concurrency on the Lease.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cluster_api_standins import ClusterApiServer

from app.retrain_cli import runner_for
from monitoring import retrain as r
from monitoring.retrain_claim import (
    ANNOTATION_AS_OF,
    ANNOTATION_RUN,
    ClaimedRunner,
    LeaseClaim,
    drift_run_name,
)

NAMESPACE, LEASE = "fraud", "fraud-retrain-drift"
SPAN_S = 7 * 86_400.0
AS_OF = "2025-04-01T06:00:00Z"
DATA = "/data/retrain/drift.parquet"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "kfp-token"
    path.write_text(f"sa-token-{uuid.uuid4().hex}\n")
    return path


@pytest.fixture
def cluster(token_file: Path):
    with ClusterApiServer(token_file.read_text().strip()) as server:
        yield server


def cluster_config(
    run_dir: Path, server: ClusterApiServer, token_file: Path, **options: Any
) -> r.RetrainConfig:
    """A replica's cluster-mode trigger settings against ``server``, without a cooldown."""
    return r.RetrainConfig(
        run_dir=run_dir,
        mode=r.CLUSTER,
        cooldown_s=0,
        host=server.url,
        cluster_data_path=DATA,
        kfp_token_path=token_file,
        **options,
    )


def lease_api(server: ClusterApiServer, token: str):
    """A CoordinationV1Api on the stand-in; in a pod, ``LeaseClaim.in_cluster`` configures it
    from the projected ServiceAccount volume instead."""
    from kubernetes import client

    conf = client.Configuration(host=server.url)
    conf.api_key = {"authorization": token}
    conf.api_key_prefix = {"authorization": "Bearer"}
    return client.CoordinationV1Api(client.ApiClient(conf))


def replica(
    tmp_path: Path, name: str, server: ClusterApiServer, token_file: Path
) -> r.RetrainTrigger:
    """What one consumer pod builds with --retrain cluster --retrain-lease (app.stream_cli)."""
    cfg = cluster_config(tmp_path / name, server, token_file)
    token = token_file.read_text().strip()
    claim = LeaseClaim(lease_api(server, token), NAMESPACE, LEASE, holder=name, span_s=SPAN_S)
    return r.RetrainTrigger(cfg, ClaimedRunner(runner_for(cfg, dedupe=True), claim))


def fire_together(triggers: list[r.RetrainTrigger], as_of: str) -> list[r.RunRecord]:
    """The same drift event reaches every replica at once; their finished records."""
    gate = threading.Barrier(len(triggers))

    def fire(t: r.RetrainTrigger) -> None:
        gate.wait()
        assert t.trigger(f"sustained drift (retrain due at {as_of})", as_of=as_of).accepted

    threads = [threading.Thread(target=fire, args=(t,)) for t in triggers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    return [t.wait(timeout=60) for t in triggers]


def test_two_replicas_submit_one_run_per_drift_event(
    tmp_path: Path, cluster: ClusterApiServer, token_file: Path
) -> None:
    a, b = (replica(tmp_path, name, cluster, token_file) for name in ("consumer-a", "consumer-b"))
    events = [pd.Timestamp(AS_OF) + pd.Timedelta(days=8 * i) for i in range(6)]
    for i, as_of in enumerate(events, 1):
        text = as_of.strftime("%Y-%m-%dT%H:%M:%SZ")
        records = fire_together([a, b], text)
        assert sorted(rec.status for rec in records) == [r.DUPLICATE, r.SUBMITTED], records
        assert len(cluster.apis.runs) == i
        (won,) = [rec for rec in records if rec.status == r.SUBMITTED]
        (lost,) = [rec for rec in records if rec.status == r.DUPLICATE]
        run = cluster.apis.runs[-1]
        assert run["display_name"] == drift_run_name(text) == lost.duplicate_of
        assert run["run_id"] == won.kfp_run_id
        params = run["runtime_config"]["parameters"]
        assert params["as_of"] == text and params["data_path"] == DATA
        lease = cluster.apis.leases[(NAMESPACE, LEASE)]
        assert lease["metadata"]["annotations"][ANNOTATION_AS_OF] == text
        assert lease["metadata"]["annotations"][ANNOTATION_RUN] == run["display_name"]
        assert lease["spec"]["holderIdentity"] == ("consumer-a", "consumer-b")[records.index(won)]
    # A replica that saw the same drift a few windows later asks for a later as_of: same event.
    later = (events[-1] + pd.Timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    a.trigger("sustained drift, seen later by this replica", as_of=later)
    assert a.wait(timeout=60).status == r.DUPLICATE and len(cluster.apis.runs) == len(events)
    assert (
        a.metrics.registry.get_sample_value("fraud_retrain_runs_total", {"outcome": r.DUPLICATE})
        >= 1
    )


def test_a_restarted_replica_finds_its_run_instead_of_submitting_again(
    tmp_path: Path, cluster: ClusterApiServer, token_file: Path
) -> None:
    """Without the Lease, the run's name still identifies the event: listing runs by that name
    before creating one keeps a retried event from running twice."""
    cfg = cluster_config(tmp_path / "pod", cluster, token_file)
    first = r.RetrainTrigger(cfg, runner_for(cfg, dedupe=True))
    first.trigger("sustained drift", as_of=AS_OF)
    assert first.wait(timeout=60).status == r.SUBMITTED
    restarted = r.RetrainTrigger(cfg, runner_for(cfg, dedupe=True))
    restarted.trigger("sustained drift (after a restart)", as_of=AS_OF)
    record = restarted.wait(timeout=60)
    assert record.status == r.DUPLICATE and record.duplicate_of == drift_run_name(AS_OF)
    assert record.kfp_run_id == cluster.apis.runs[0]["run_id"] and len(cluster.apis.runs) == 1


def test_the_token_is_read_per_call_and_a_rejected_one_fails_the_run_with_the_cause(
    tmp_path: Path, cluster: ClusterApiServer, token_file: Path
) -> None:
    """The kubelet rotates the projected token: the client follows the file, and a token the
    API refuses is a failed run that says so (the consumer goes on)."""
    cfg = cluster_config(tmp_path / "pod", cluster, token_file)
    t = r.RetrainTrigger(cfg, runner_for(cfg, dedupe=True))
    t.trigger("sustained drift", as_of=AS_OF)
    assert t.wait(timeout=60).status == r.SUBMITTED
    cluster.apis.token = "rotated-token"  # the file still holds the old one
    t.trigger("sustained drift", as_of="2025-05-01T00:00:00Z")
    record = t.wait(timeout=60)
    assert record.status == r.FAILED and "401" in (record.error or ""), record
    token_file.write_text("rotated-token\n")
    t.trigger("sustained drift", as_of="2025-05-01T00:00:00Z")
    assert t.wait(timeout=60).status == r.SUBMITTED and len(cluster.apis.runs) == 2


def test_the_stand_in_rejects_what_a_cluster_would(
    tmp_path: Path, cluster: ClusterApiServer, token_file: Path
) -> None:
    """Unknown run parameters fail the submission, as the KFP backend fails them."""
    cfg = cluster_config(
        tmp_path / "pod", cluster, token_file, pipeline_params={"no_such_parameter": 1}
    )
    t = r.RetrainTrigger(cfg, runner_for(cfg, dedupe=True))
    t.trigger("sustained drift", as_of=AS_OF)
    record = t.wait(timeout=60)
    assert record.status == r.FAILED and "no_such_parameter" in (record.error or "")
    assert cluster.apis.runs == []


def test_a_claim_needs_an_as_of_and_a_sane_span(cluster: ClusterApiServer, token_file: Path):
    api = lease_api(cluster, token_file.read_text().strip())
    with pytest.raises(ValueError, match="span"):
        LeaseClaim(api, NAMESPACE, LEASE, holder="pod", span_s=0)
    claim = LeaseClaim(api, NAMESPACE, LEASE, holder="pod", span_s=SPAN_S)
    with pytest.raises(ValueError, match="not a timestamp"):
        claim.claim("yesterday-ish")
    job = r.RetrainJob("run-1", "drift", Path("."), {"train_start": "2025-01-01"})
    with pytest.raises(ValueError, match="as_of"):
        ClaimedRunner(lambda j: {"pushed": None}, claim)(job)


def test_the_consumer_cli_wires_the_claim_and_per_replica_drift_state(tmp_path: Path) -> None:
    import socket

    from app import stream_cli as cli
    from core.settings import Settings
    from streaming.consumer import ConsumerConfig
    from streaming.metrics import StreamMetrics

    common = ["stream", "consume", "--bootstrap-servers", "kafka:9092"]
    common += ["--drift-window-time", "24h", "--drift-state-dir", str(tmp_path / "drift")]
    common += ["--retrain-host", "http://ml-pipeline.kubeflow:8888"]
    common += ["--retrain-cluster-data-path", DATA, "--retrain-lease", LEASE]
    config = ConsumerConfig(bootstrap_servers="kafka:9092", state_dir=tmp_path / "stream")
    settings = Settings(run_dir=tmp_path)

    local = cli.build_parser().parse_args([*common, "--retrain", "local"])
    with pytest.raises(ValueError, match="--retrain cluster"):
        cli._drift_loop(local, settings, config, StreamMetrics())
    # Outside a pod there are no API credentials to claim with: a clear error at start.
    cluster = cli.build_parser().parse_args([*common, "--retrain", "cluster"])
    with pytest.raises(RuntimeError, match="in-cluster Kubernetes API credentials"):
        cli._drift_loop(cluster, settings, config, StreamMetrics())

    monitor_only = cli.build_parser().parse_args(common[:8])
    loop = cli._drift_loop(monitor_only, settings, config, StreamMetrics())
    own = tmp_path / "drift" / f"{socket.gethostname()}.json"
    assert loop.config.state_path == own and loop.trigger is None
