"""``fraud retrain``: the retrain trigger wired to a pipeline runner, scheduled or run once.

The trigger (``monitoring.retrain``) takes any runner; this module gives it the real ones:
``local_runner`` runs the pipeline on this machine (kfp.local), ``ClusterRunner`` submits the
compiled pipeline to Kubeflow Pipelines. ``runner_for`` picks one from the config's mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.model import model_versions
from core.settings import Settings
from monitoring.metrics import RetrainMetrics
from monitoring.retrain import (
    CLUSTER,
    DUPLICATE,
    FAILED,
    LOCAL,
    NOT_BLESSED,
    PUSHED,
    SUBMITTED,
    RetrainConfig,
    RetrainJob,
    RetrainTrigger,
    Runner,
    parse_duration,
    run_schedule,
)
from monitoring.retrain_claim import drift_run_name
from pipelines.params import parse_params

log = logging.getLogger(__name__)


def local_runner(job: RetrainJob) -> Mapping[str, Any]:
    """The real pipeline on this machine (kfp.local): the push step's result."""
    from pipelines.runners import run_local

    return run_local(job.params, job.run_dir / "kfp")


class ClusterRunner:
    """Submits to Kubeflow Pipelines; with ``wait_timeout_s`` waits for the run's end and tells
    pushed from not blessed by the versions under ``model_base_path`` when it is visible here
    (otherwise the outcome stays ``submitted``).

    ``token_path``: authenticate with the audience-bound ServiceAccount token the kubelet
    projects there (``ServiceAccountTokenVolumeCredentials``, re-read before each call, so its
    rotation is followed). ``dedupe``: name the run after its windows (``drift_run_name``) and
    submit nothing when a run of that name exists (the result's ``duplicate_of``).
    """

    def __init__(
        self,
        host: str,
        experiment: str = "fraud",
        package: str | Path | None = None,
        wait_timeout_s: float | None = None,
        client: Any = None,
        token_path: str | Path | None = None,
        dedupe: bool = False,
    ) -> None:
        self.host = host
        self.experiment = experiment
        self.package = package
        self.wait_timeout_s = wait_timeout_s
        self.token_path = token_path
        self.dedupe = dedupe
        # A kfp.Client, made on first use so that building the CLI needs no cluster.
        self.client = client

    def _client(self) -> Any:
        if self.client is None:
            if self.token_path is None:
                from pipelines.runners import kfp_client

                self.client = kfp_client(self.host)
            else:
                import kfp
                from kfp.client.set_volume_credentials import (
                    ServiceAccountTokenVolumeCredentials,
                )

                credentials = ServiceAccountTokenVolumeCredentials(path=str(self.token_path))
                self.client = kfp.Client(host=self.host, credentials=credentials)
        return self.client

    def __call__(self, job: RetrainJob) -> Mapping[str, Any]:
        from pipelines.runners import COMPILED_PATH, submit

        client = self._client()
        base = str(job.params.get("model_base_path", ""))
        visible = bool(base) and "://" not in base and Path(base).is_dir()
        before = set(model_versions(base)) if visible else set()
        package = self.package or COMPILED_PATH
        if self.dedupe:
            name = _run_name(job)
            existing = _runs_named(client, name)
            if existing:
                log.info("retrain %s: KFP run %s exists (%s)", job.run_id, name, existing[0])
                return {"pushed": None, "duplicate_of": name, "kfp_run_id": existing[0]}
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=job.params,
                experiment_name=self.experiment,
                run_name=name,
            )
            run_id = run.run_id
        else:
            run_id = submit(client, job.params, self.experiment, package)
        log.info("retrain %s: submitted KFP run %s to %s", job.run_id, run_id, self.host)
        result: dict[str, Any] = {"pushed": None, "kfp_run_id": run_id}
        if not self.wait_timeout_s:
            return result
        run = client.wait_for_run_completion(run_id, timeout=int(self.wait_timeout_s))
        state = str(getattr(run, "state", "UNKNOWN")).upper()
        if state != "SUCCEEDED":
            raise RuntimeError(f"KFP run {run_id} on {self.host} ended in state {state}")
        if visible:
            new = sorted(set(model_versions(base)) - before)
            result.update(pushed=bool(new), version=new[-1] if new else None)
        return result


def _run_name(job: RetrainJob) -> str:
    as_of = job.params.get("as_of")
    if not as_of:
        raise ValueError(
            f"retrain {job.run_id}: naming the run after its windows needs an as_of "
            "(relative windows)"
        )
    return drift_run_name(str(as_of))


def _runs_named(client: Any, name: str) -> list[str]:
    """Ids of the KFP runs (any state, any experiment) whose display name is ``name``."""
    query = {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    response = client.list_runs(filter=json.dumps(query), page_size=10)
    return [run.run_id for run in (response.runs or [])]


def runner_for(config: RetrainConfig, dedupe: bool = False) -> Runner:
    """The pipeline runner for the config's mode (``dedupe``: see ``ClusterRunner``)."""
    if config.mode == LOCAL:
        return local_runner
    return ClusterRunner(
        config.host or "",
        config.experiment,
        config.package,
        config.wait_timeout_s,
        token_path=config.kfp_token_path,
        dedupe=dedupe,
    )


def config_from_args(args: argparse.Namespace, settings: Settings) -> RetrainConfig:
    return RetrainConfig(
        run_dir=Path(args.run_dir) if args.run_dir else settings.run_dir / "retrain",
        mode=args.mode,
        cooldown_s=parse_duration(args.cooldown),
        state_dir=None
        if args.no_consumed
        else (Path(args.state_dir) if args.state_dir else settings.run_dir / "stream"),
        base_data=Path(args.base_data) if args.base_data else None,
        as_of=args.as_of,
        train_days=args.train_days,
        eval_days=args.eval_days,
        train_start=args.train_start,
        train_end=args.train_end,
        eval_start=args.eval_start,
        eval_end=args.eval_end,
        label_delay_days=args.label_delay_days or settings.label_delay_days,
        model_base_path=Path(args.model_base_path or settings.model_base_path),
        model_name=args.model_name or settings.model_name,
        pipeline_params=parse_params(args.set),
        host=args.host,
        experiment=args.experiment,
        package=Path(args.package) if args.package else None,
        cluster_data_path=args.cluster_data_path,
        export_path=Path(args.export_path) if args.export_path else None,
        wait_timeout_s=parse_duration(args.wait) if args.wait else None,
        kfp_token_path=Path(args.kfp_token) if args.kfp_token else None,
    )


def retrain_command(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``fraud retrain``: scheduled (``--every``) or one-off (``--once``) retraining."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    settings = settings if settings is not None else Settings.from_env()
    if not args.once and not args.every:
        raise ValueError("retrain: give --every DURATION (e.g. 6h) or --once")
    every = parse_duration(args.every) if args.every else 0.0
    metrics = RetrainMetrics()
    server = metrics.serve(args.metrics_port, addr=args.metrics_host) if args.metrics_port else None
    config = config_from_args(args, settings)
    trigger = RetrainTrigger(config, runner_for(config), metrics=metrics)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current run (again to abort it)", signum)
        stop.set()
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)

    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        results = run_schedule(trigger, every, once=args.once, stop=stop, reason=args.reason)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
    failed = False
    for result, record in results:
        if not result.accepted:
            print(f"retrain refused ({result.refused}): {result.message}")
            failed = True
        elif record is not None:
            detail = {
                PUSHED: f"version {record.version}",
                NOT_BLESSED: "; ".join(record.gate_reasons or []),
                FAILED: record.error or "",
                SUBMITTED: f"KFP run {record.kfp_run_id}",
                DUPLICATE: f"covered by KFP run {record.duplicate_of}",
            }.get(record.status, "")
            print(f"retrain {record.run_id}: {record.status} {detail}".rstrip())
            failed |= record.status == FAILED
    return 1 if failed else 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``retrain`` on the ``fraud`` CLI (handler signature: ``(args, settings)``)."""
    p = subparsers.add_parser(
        "retrain",
        help="retrain on consumed + historical data, every DURATION or once",
        description="Scheduled retraining on this machine (on a KFP cluster prefer "
        "`fraud pipeline schedule`). Single flight and cooldown as for drift-triggered runs.",
    )
    when = p.add_argument_group("schedule")
    when.add_argument("--every", help="period, e.g. 6h, 30m, 1d (runs at once, then every period)")
    when.add_argument(
        "--once", action="store_true", help="one run, then exit (status 1 if it failed)"
    )
    when.add_argument(
        "--cooldown", default="0", help="refuse a run this soon after the last start (default 0)"
    )
    when.add_argument("--reason", help="reason recorded in the history (default: the schedule)")
    data = p.add_argument_group("data")
    data.add_argument("--state-dir", help="the consumer's state dir (default <run_dir>/stream)")
    data.add_argument("--no-consumed", action="store_true", help="ignore the consumed data")
    data.add_argument("--base-data", help="historical labelled transactions merged underneath")
    data.add_argument("--as-of", help="cut-off time (default: the latest event time in the data)")
    data.add_argument("--train-days", type=int, default=28)
    data.add_argument("--eval-days", type=int, default=7)
    data.add_argument("--train-start", help="explicit windows instead of relative ones")
    data.add_argument("--train-end")
    data.add_argument("--eval-start")
    data.add_argument("--eval-end")
    data.add_argument("--label-delay-days", type=int)
    model = p.add_argument_group("pipeline")
    model.add_argument("--run-dir", help="history and run artifacts (default <run_dir>/retrain)")
    model.add_argument("--mode", choices=(LOCAL, CLUSTER), default=LOCAL)
    model.add_argument("--model-base-path")
    model.add_argument("--model-name")
    model.add_argument("--set", action="append", metavar="NAME=VALUE", help="pipeline parameter")
    model.add_argument("--host", help="cluster mode: KFP API endpoint")
    model.add_argument("--experiment", default="fraud")
    model.add_argument("--package", help="cluster mode: compiled pipeline YAML")
    model.add_argument("--cluster-data-path", help="cluster mode: dataset path seen by the pods")
    model.add_argument("--export-path", help="cluster mode: write the merged dataset here first")
    model.add_argument("--wait", help="cluster mode: wait up to DURATION for the run to end")
    model.add_argument(
        "--kfp-token",
        help="cluster mode: ServiceAccount token file projected for the KFP API "
        "(audience pipelines.kubeflow.org)",
    )
    p.add_argument("--metrics-port", type=int, help="serve fraud_retrain_* on this port")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics server binds (default loopback; 0.0.0.0 to expose it)",
    )
    p.set_defaults(func=retrain_command)


def main(argv: list[str] | None = None) -> int:
    """``python -m app.retrain_cli [flags]``: the command without the platform CLI."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m app.retrain_cli")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["retrain", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"retrain: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
