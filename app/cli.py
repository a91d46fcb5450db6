"""`fraud`: the platform's command line. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

# The path defaults of the commands, from the one place that defines them.
DEFAULTS = Settings()


def _handbook_simulate(args: argparse.Namespace, output: Path) -> pd.DataFrame:
    from core.dataio import write_transactions
    from core.handbook import HandbookConfig, simulate_handbook

    foreign = [
        flag
        for flag, value in (
            ("--params", args.params),
            ("--drift-day", args.drift_day),
            ("--drift-kind", args.drift_kind),
        )
        if value is not None
    ]
    if foreign:
        raise ValueError(
            f"--profile handbook: {', '.join(foreign)} belong to the platform profile; "
            "the handbook profile takes --customers --terminals --days --start-date --seed "
            "--label-delay-days"
        )
    given = {
        "n_customers": args.customers,
        "n_terminals": args.terminals,
        "n_days": args.days,
        "start_date": args.start_date,
        "seed": args.seed,
        "label_delay_days": args.label_delay_days,
    }
    cfg = HandbookConfig(**{k: v for k, v in given.items() if v is not None})
    df = simulate_handbook(cfg)
    write_transactions(df, output)
    return df


def _data_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from core.datajobs import load_params, run_simulate, simulation_config

    output = args.output or settings.raw_data
    if args.profile == "handbook":
        df = _handbook_simulate(args, output)
    else:
        params = load_params(args.params) if args.params else {}
        cfg = simulation_config(
            params,
            n_customers=args.customers,
            n_terminals=args.terminals,
            n_days=args.days,
            start_date=args.start_date,
            seed=args.seed,
            label_delay_days=args.label_delay_days,
            drift_day=args.drift_day,
            drift_kind=args.drift_kind,
        )
        df = run_simulate(cfg, output)
    print(f"wrote {len(df):,} transactions ({100 * df['is_fraud'].mean():.3f} % fraud) to {output}")
    return 0


def _data_validate(args: argparse.Namespace, settings: Settings) -> int:
    from core.datajobs import run_validate

    summary = run_validate(args.input, args.output, args.skip_invalid, args.rejects, args.report)
    print(
        f"{summary['rows_valid']:,} valid rows written to {args.output}; "
        f"{summary['rows_rejected']:,} rejected"
        + (f" (see {summary['rejects_file']})" if summary["rejects_file"] else "")
    )
    return 0


def _data_summary(args: argparse.Namespace, settings: Settings) -> int:
    from core.dataio import read_transactions
    from core.datajobs import format_summary

    raw = read_transactions(args.raw)
    feats = read_transactions(args.features) if args.features else None
    print(format_summary(raw, feats))
    return 0


def _features_build(args: argparse.Namespace, settings: Settings) -> int:
    from core.datajobs import run_features

    table = run_features(
        args.input, args.output, args.label_delay_days or settings.label_delay_days
    )
    print(f"wrote features for {len(table):,} transactions to {args.output}")
    return 0


def _schema_infer(args: argparse.Namespace, settings: Settings) -> int:
    from components.ingest.ingest import ingest
    from components.validate.validate import compute_statistics, curate_schema, write_schema
    from core.windows import resolve_windows

    windows = resolve_windows(
        train_start=args.train_start,
        train_end=args.train_end,
        label_delay_days=settings.label_delay_days,
    )
    result = ingest(str(args.data), windows, settings.label_delay_days)
    path = write_schema(curate_schema(compute_statistics(result.train)), args.output)
    print(
        f"wrote schema inferred from {len(result.train):,} rows to {path}: review it, then commit"
    )
    return 0


def _pipeline_params(args: argparse.Namespace, settings: Settings) -> dict:
    """Pipeline arguments from the flags, typed by the pipeline's own input spec."""
    from core.metadata import parse_model_families
    from pipelines.params import parse_assignments, typed_params

    given = {
        "data_path": str(args.data) if args.data else None,
        "train_start": args.train_start,
        "train_end": args.train_end,
        "eval_start": args.eval_start,
        "eval_end": args.eval_end,
        "as_of": args.as_of,
        "train_days": args.train_days,
        "eval_days": args.eval_days,
        "model_base_path": str(args.model_base_path or settings.model_base_path),
        "model_name": args.model_name or settings.model_name,
        "label_delay_days": settings.label_delay_days,
        **parse_assignments(args.set),
    }
    params = typed_params(given)
    if "model" in params:  # checked before a run spends minutes on the steps before train
        parse_model_families(params["model"])
    return params


def _pipeline_run(args: argparse.Namespace, settings: Settings) -> int:
    from components.evaluate.evaluator import comparison_table
    from pipelines.runners import run_local

    result = run_local(_pipeline_params(args, settings), args.pipeline_root)
    print(comparison_table(result["families"], result["model_family"]))
    if result.get("pushed"):
        print(f"model pushed: version {result['version']} at {result['path']}")
    else:
        print("model NOT pushed: " + "; ".join(result.get("reasons", [])))
    return 0


def _pipeline_compile(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runners import COMPILED_PATH, compile_pipeline

    print(f"wrote {compile_pipeline(args.output or COMPILED_PATH, args.image)}")
    return 0


def _pipeline_submit(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runners import COMPILED_PATH, kfp_client, submit

    run_id = submit(
        kfp_client(args.host),
        _pipeline_params(args, settings),
        args.experiment,
        args.package or COMPILED_PATH,
    )
    print(f"submitted run {run_id} to {args.host}")
    return 0


def _pipeline_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runners import COMPILED_PATH, check_recurring, kfp_client, schedule

    params = _pipeline_params(args, settings)
    check_recurring(params)  # before connecting: a fixed window is refused either way
    job = schedule(
        kfp_client(args.host),
        args.cron,
        params,
        args.experiment,
        package=args.package or COMPILED_PATH,
    )
    print(f"created recurring run {job} ({args.cron}) on {args.host}")
    return 0


def _score(args: argparse.Namespace, settings: Settings) -> int:
    from components.batch_score import batch_score

    out = batch_score(args.model, args.data, args.output, args.start, args.end)
    counts = out["decision"].value_counts().to_dict()
    print(f"scored {len(out):,} transactions -> {args.output}  decisions: {counts}")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.model_server import main as serve_main

    return serve_main(args.server_args)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.demo import main as demo_main

    return demo_main(["--run-dir", str(args.run_dir)] if args.run_dir else [])


def _add_pipeline_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="raw transactions (default: the DVC dataset)")
    p.add_argument("--train-start", help="first day of training (inclusive)")
    p.add_argument("--train-end", help="end of training (exclusive)")
    p.add_argument("--eval-start", help="evaluation window start (default: carved from training)")
    p.add_argument("--eval-end")
    p.add_argument("--as-of", help="relative windows ending label_delay days before this date")
    p.add_argument("--train-days", type=int)
    p.add_argument("--eval-days", type=int)
    p.add_argument("--model-base-path", type=Path)
    p.add_argument("--model-name")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any other pipeline parameter, e.g. --set epochs=10 --set min_auc=0.85",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud", description="Real-time card fraud detection platform."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="simulate, validate and summarise raw transaction data")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sim = data_sub.add_parser("simulate", help="generate a seeded synthetic transaction dataset")
    sim.add_argument(
        "--profile",
        choices=("platform", "handbook"),
        default="platform",
        help="platform: the project's own generator; handbook: the Fraud Detection Handbook's",
    )
    sim.add_argument("--params", type=Path, help="params.yaml whose 'simulate' section to use")
    sim.add_argument("--customers", type=int)
    sim.add_argument("--terminals", type=int)
    sim.add_argument("--days", type=int)
    sim.add_argument("--start-date")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--label-delay-days", type=int)
    sim.add_argument("--drift-day", type=int, help="day index from which the drift starts")
    sim.add_argument("--drift-kind", choices=("new_pattern", "spend_shift"))
    sim.add_argument("--output", type=Path, help="CSV, CSV.gz or Parquet path")
    sim.set_defaults(func=_data_simulate)

    val = data_sub.add_parser("validate", help="check a raw file against the schema contract")
    val.add_argument("input", type=Path)
    val.add_argument("--output", type=Path, required=True, help="where the valid rows go")
    val.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write bad rows with reasons to a rejects file and keep the rest",
    )
    val.add_argument("--rejects", type=Path, help="rejects file (default: beside --output)")
    val.add_argument("--report", type=Path, help="JSON summary of the validation")
    val.set_defaults(func=_data_validate)

    summ = data_sub.add_parser("summary", help="rows, fraud rate per pattern, feature table head")
    summ.add_argument("--raw", type=Path, default=DEFAULTS.validated_data)
    summ.add_argument("--features", type=Path, default=DEFAULTS.feature_table)
    summ.set_defaults(func=_data_summary)

    feat = sub.add_parser("features", help="build the feature table with the batch engine")
    feat_sub = feat.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    build = feat_sub.add_parser("build", help="raw transactions -> transactions + features")
    build.add_argument("input", type=Path)
    build.add_argument("--output", type=Path, required=True)
    build.add_argument("--label-delay-days", type=int)
    build.set_defaults(func=_features_build)

    schema = sub.add_parser("schema", help="the curated TFDV schema the pipeline validates against")
    schema_sub = schema.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    infer = schema_sub.add_parser("infer", help="infer a schema from data (then edit by hand)")
    infer.add_argument("--data", type=Path, default=DEFAULTS.validated_data)
    infer.add_argument("--train-start", required=True)
    infer.add_argument("--train-end", required=True)
    infer.add_argument("--output", type=Path, default=Path("pipelines/schema/schema.pbtxt"))
    infer.set_defaults(func=_schema_infer)

    pipe = sub.add_parser("pipeline", help="the KFP training pipeline: run, compile, submit")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = pipe_sub.add_parser("run", help="run the pipeline locally (kfp.local, offline)")
    _add_pipeline_params(run)
    run.add_argument("--pipeline-root", type=Path, default=Path("runs/kfp"))
    run.set_defaults(func=_pipeline_run)
    comp = pipe_sub.add_parser("compile", help="write the pipeline's IR YAML")
    comp.add_argument("--output", type=Path, default=None)
    comp.add_argument("--image", help="component image (default FRAUD_COMPONENT_IMAGE or built-in)")
    comp.set_defaults(func=_pipeline_compile)
    for name, helptext, func in (
        ("submit", "start a run on a Kubeflow Pipelines cluster", _pipeline_submit),
        (
            "schedule",
            "create a recurring run (scheduled retraining): give --train-days and --eval-days; "
            "each run's windows end at its own schedule time",
            _pipeline_schedule,
        ),
    ):
        p = pipe_sub.add_parser(name, help=helptext)
        _add_pipeline_params(p)
        p.add_argument("--host", required=True, help="KFP API endpoint URL")
        p.add_argument("--experiment", default="fraud")
        p.add_argument("--package", type=Path, default=None, help="compiled YAML to use")
        if name == "schedule":
            p.add_argument("--cron", required=True, help="cron expression, e.g. '0 0 3 * * *'")
        p.set_defaults(func=func)

    score = sub.add_parser("score", help="batch-score a file with a pushed model")
    score.add_argument("--model", type=Path, required=True, help="version dir or base path")
    score.add_argument("--data", type=Path, required=True)
    score.add_argument("--start", help="first day to score (earlier rows are history only)")
    score.add_argument("--end")
    score.add_argument("--output", type=Path, required=True)
    score.set_defaults(func=_score)

    serve = sub.add_parser(
        "serve",
        help="TF Serving REST API on pushed SavedModels (tensorflow_model_server's flags)",
        add_help=False,
    )
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=_serve)

    # Streaming (broker, topics, stream), labels, models, deployment and retraining register their
    # own commands; their modules import nothing heavy at load time.
    from app import label_cli, model_cli, retrain_cli, stream_cli
    from serving import deploy_status

    stream_cli.add_subcommands(sub)
    label_cli.add_subcommands(sub)
    retrain_cli.add_subcommands(sub)
    model_cli.add_subcommands(sub)
    deploy_status.add_subcommands(sub)

    demo = sub.add_parser(
        "demo", help="the main job: data -> pipeline -> stream -> drift -> retrain -> report"
    )
    demo.add_argument("--run-dir", type=Path, help="where logs, models and the report go")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # The server owns its flags (tensorflow_model_server's), --help included.
        from serving.model_server import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        return int(args.func(args, settings) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"fraud {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
