"""`fraud model list|canary|promote|rollback`: version rollout through the model config file.

``add_subcommands(subparsers)`` registers the commands on the platform CLI. The work is done by
``serving.rollout`` (file edits plus the REST status API), so the commands behave the same on a
local models directory and on the models volume mounted in a pod.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.settings import Settings


def _rollout(args: argparse.Namespace, settings: Settings) -> Any:
    from serving.rollout import Rollout, default_config_path

    base_path = args.model_base_path or settings.model_base_path
    return Rollout(
        config_path=args.config_file or default_config_path(base_path),
        model_name=args.model_name or settings.model_name,
        base_path=base_path,
        serving_url=args.serving_url or settings.serving_url,
        timeout_s=args.timeout,
    )


def _print_steps(rollout: Any, steps: list[Any], done: str) -> None:
    for n, state in enumerate(steps, 1):
        print(f"  step {n}/{len(steps)}: {state.describe()} (served)")
    print(f"{done} ({rollout.config_path})")


def model_list(args: argparse.Namespace, settings: Settings) -> int:
    rollout = _rollout(args, settings)
    rows = rollout.list_versions()
    if not rows:
        print(f"no versions of {rollout.model_name} under {rollout.base_path}")
    for row in rows:
        where = [] if row.on_disk else ["not on disk"]
        flags = ", ".join([*row.labels, *(["loaded"] if row.loaded else []), *where]) or "-"
        detail = row.metadata_error or json.dumps(dict(row.metrics), sort_keys=True)
        print(f"{row.version:>6}  [{flags}]  {detail}")
    return 0


def model_canary(args: argparse.Namespace, settings: Settings) -> int:
    rollout = _rollout(args, settings)
    steps = rollout.canary(args.version)
    _print_steps(rollout, steps, f"version {args.version} is canary")
    return 0


def model_promote(args: argparse.Namespace, settings: Settings) -> int:
    rollout = _rollout(args, settings)
    steps = rollout.promote()
    _print_steps(rollout, steps, "canary promoted to stable")
    return 0


def model_rollback(args: argparse.Namespace, settings: Settings) -> int:
    rollout = _rollout(args, settings)
    steps = rollout.rollback(args.to)
    _print_steps(rollout, steps, f"stable is version {args.to}" if args.to else "canary dropped")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-base-path",
        type=Path,
        help="the model's version directories as seen here (default FRAUD_MODEL_BASE_PATH)",
    )
    p.add_argument("--model-name", help="model in the config file (default FRAUD_MODEL_NAME)")
    p.add_argument(
        "--config-file",
        type=Path,
        help="the server's --model_config_file (default: models.config beside the base path)",
    )
    p.add_argument("--serving-url", help="model server REST URL (default FRAUD_SERVING_URL)")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server to apply each step (default 120)",
    )


def add_subcommands(subparsers: Any) -> None:
    model = subparsers.add_parser(
        "model", help="served model versions: list, canary, promote, rollback"
    )
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="versions with their labels and metadata metrics")
    ls.set_defaults(func=model_list)
    can = sub.add_parser("canary", help="load a version beside stable and label it canary")
    can.add_argument("version", type=int)
    can.set_defaults(func=model_canary)
    pro = sub.add_parser("promote", help="move stable to the canary and unload the old stable")
    pro.set_defaults(func=model_promote)
    rb = sub.add_parser("rollback", help="drop the canary, or make --to VERSION stable")
    rb.add_argument("--to", type=int, metavar="VERSION", help="version to make stable")
    rb.set_defaults(func=model_rollback)
    for p in (ls, can, pro, rb):
        _common(p)
