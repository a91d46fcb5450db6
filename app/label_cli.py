"""`fraud label publish`: an analyst's review outcome onto the labels topic, once per transaction.

The same outcome again is acknowledged without a second label; a different outcome for a
labelled transaction is refused (see ``streaming.review_labels``). The consumer's
``POST /labels`` (``fraud stream consume --review-ledger``) does the same over HTTP; both may
share one ledger, even at once (each publish holds the ledger file's lock).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core import contract as c
from core.settings import Settings


def default_ledger(settings: Settings) -> Path:
    return settings.run_dir / "review-labels.jsonl"


def label_publish(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from streaming.kafka_config import security_from_args
    from streaming.review_labels import LabelConflict, ReviewLabelPublisher

    settings = settings if settings is not None else Settings.from_env()
    outcome = {
        c.TRANSACTION_ID: args.transaction_id,
        c.TERMINAL_ID: args.terminal_id,
        c.CUSTOMER_ID: args.customer_id,
        c.TIMESTAMP: args.tx_datetime,
        c.LABEL: args.is_fraud,
        c.LABEL_AVAILABLE_AT: args.available_at,
    }
    publisher = ReviewLabelPublisher(
        args.bootstrap_servers or settings.bootstrap_servers,
        args.ledger or default_ledger(settings),
        settings.topics,
        security_from_args(args),
    )
    try:
        status = publisher.publish(outcome)
    except LabelConflict as err:
        raise ValueError(str(err)) from err
    finally:
        publisher.close()
    print(f"{args.transaction_id}: {c.LABEL}={args.is_fraud} {status}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``label publish`` on the ``fraud`` CLI."""
    from streaming.kafka_config import add_kafka_arguments

    label = subparsers.add_parser("label", help="analysts' review outcomes as labels")
    label_sub = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    pub = label_sub.add_parser(
        "publish", help="publish one review outcome to the labels topic (idempotent)"
    )
    pub.add_argument("--transaction-id", required=True)
    pub.add_argument("--terminal-id", required=True)
    pub.add_argument("--customer-id", required=True)
    pub.add_argument("--tx-datetime", required=True, help="the transaction's time, ISO-8601 (UTC)")
    pub.add_argument("--is-fraud", type=int, choices=(0, 1), required=True)
    pub.add_argument(
        "--available-at", help="when the outcome became known, ISO-8601 (default: now)"
    )
    pub.add_argument(
        "--ledger",
        type=Path,
        help="the JSON-lines record of published outcomes (default: <run_dir>/review-labels.jsonl)",
    )
    add_kafka_arguments(pub, default_bootstrap=None)
    pub.set_defaults(func=label_publish)
