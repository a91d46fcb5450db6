"""`fraud`: the platform's command line. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.settings import Settings


def _data_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from components.datajobs import load_params, run_simulate, simulation_config

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
    output = args.output or settings.raw_data
    df = run_simulate(cfg, output)
    print(f"wrote {len(df):,} transactions ({100 * df['is_fraud'].mean():.3f} % fraud) to {output}")
    return 0


def _data_validate(args: argparse.Namespace, settings: Settings) -> int:
    from components.datajobs import run_validate

    summary = run_validate(args.input, args.output, args.skip_invalid, args.rejects, args.report)
    print(
        f"{summary['rows_valid']:,} valid rows written to {args.output}; "
        f"{summary['rows_rejected']:,} rejected"
        + (f" (see {summary['rejects_file']})" if summary["rejects_file"] else "")
    )
    return 0


def _data_summary(args: argparse.Namespace, settings: Settings) -> int:
    from components.dataio import read_transactions
    from components.datajobs import format_summary

    raw = read_transactions(args.raw)
    feats = read_transactions(args.features) if args.features else None
    print(format_summary(raw, feats))
    return 0


def _features_build(args: argparse.Namespace, settings: Settings) -> int:
    from components.datajobs import run_features

    table = run_features(
        args.input, args.output, args.label_delay_days or settings.label_delay_days
    )
    print(f"wrote features for {len(table):,} transactions to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud", description="Real-time card fraud detection platform."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="simulate, validate and summarise raw transaction data")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sim = data_sub.add_parser("simulate", help="generate a seeded synthetic transaction dataset")
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
    summ.add_argument("--raw", type=Path, default=Path("data/validated/transactions.parquet"))
    summ.add_argument("--features", type=Path, default=Path("data/features/features.parquet"))
    summ.set_defaults(func=_data_summary)

    feat = sub.add_parser("features", help="build the feature table with the batch engine")
    feat_sub = feat.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    build = feat_sub.add_parser("build", help="raw transactions -> transactions + features")
    build.add_argument("input", type=Path)
    build.add_argument("--output", type=Path, required=True)
    build.add_argument("--label-delay-days", type=int)
    build.set_defaults(func=_features_build)

    return parser


def main(argv: list[str] | None = None) -> int:
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
