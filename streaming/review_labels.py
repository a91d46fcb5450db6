"""Analysts' review outcomes as labels on the labels topic, once per transaction.

A blocked transaction gets no natural label (a declined payment is not disputed), and a
reviewed one is labelled by whoever reviews it: ``ReviewLabelPublisher.publish`` turns such a
confirmed outcome into a label message (``messages.LABEL_FIELDS``, keyed by transaction id, so
a compacted labels topic keeps one per transaction) and keeps a ledger of what it published, a
JSON-lines file:

* the same outcome for a transaction again is acknowledged without a second message, so a
  retried request or a double click changes nothing (the consumer and the monitors judge each
  transaction once, and the terminal-risk features would count a repeated fraud twice);
* a different outcome for a transaction already labelled is refused (``LabelConflict``): a
  label cannot be taken back on the topic;
* a message is recorded in the ledger only once the broker acknowledged it;
* several processes may share one ledger (the consumer replicas on their shared volume, and
  ``fraud label publish``): each publish holds the file's lock while it reads what the others
  appended, sends and records, so an outcome sent to two replicas at once is published once.

The message is checked by the consumer's own parser (``messages.parse_label``) before it is
sent: what is published is what the consumer accepts. Thread-safe: ``label_endpoint``, the
``POST /labels`` of the consumer's metrics server (``fraud stream consume --review-ledger``),
calls it from its request threads; ``fraud label publish`` is the command.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import contract as c
from core.settings import Topics
from streaming.kafka_config import KafkaSecurity, client_config
from streaming.messages import LABEL_FIELDS, Rejected, iso_from_epoch, label_message, parse_label

log = logging.getLogger(__name__)

PUBLISHED, ALREADY_PUBLISHED = "published", "already published"
# A review outcome is a few hundred bytes: anything far larger is not one.
MAX_BODY_BYTES = 64 * 1024
# What a caller gives: the label fields but the availability time, which defaults to now.
OUTCOME_FIELDS = tuple(f for f in LABEL_FIELDS if f != c.LABEL_AVAILABLE_AT)


class LabelConflict(ValueError):
    """The transaction was labelled with the other outcome before."""


def label_from_outcome(outcome: Mapping[str, Any], now: datetime | None = None) -> bytes:
    """The label message of one review outcome; ValueError naming what is wrong.

    ``outcome`` holds ``OUTCOME_FIELDS`` (``is_fraud`` 0 or 1) and optionally
    ``label_available_at`` (default: ``now``, the moment the outcome became known).
    """
    if not isinstance(outcome, Mapping):
        raise ValueError(f"a review outcome is a JSON object, got {type(outcome).__name__}")
    unknown = sorted(set(outcome) - set(LABEL_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(LABEL_FIELDS)}"
        )
    row = dict(outcome)
    if row.get(c.LABEL_AVAILABLE_AT) is None:
        moment = now or datetime.now(UTC)
        row[c.LABEL_AVAILABLE_AT] = iso_from_epoch(int(moment.timestamp()))
    missing = [f for f in OUTCOME_FIELDS if row.get(f) is None]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    message = label_message(row)
    parsed = parse_label(message)
    if isinstance(parsed, Rejected):
        raise ValueError(parsed.reason)
    if parsed.available_at < parsed.tx_ts:
        raise ValueError(
            f"{c.LABEL_AVAILABLE_AT} {row[c.LABEL_AVAILABLE_AT]} is before the transaction's "
            f"{c.TIMESTAMP} {row[c.TIMESTAMP]}"
        )
    return message


class ReviewLabelPublisher:
    """Publishes review outcomes to ``topics.labels``, once per transaction (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: str,
        ledger_path: Path,
        topics: Topics = Topics(),  # noqa: B008 - frozen dataclass, safe as a default
        security: KafkaSecurity | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topics.labels
        self.ledger_path = Path(ledger_path)
        self.send_timeout_s = send_timeout_s
        self._lock = threading.Lock()
        self._ledger: dict[str, int] = {}
        self._ledger_end = 0  # bytes of the ledger file read into _ledger
        self._entries_read = 0  # its lines, for error messages
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked_ledger() as fh:
            self._read_new_entries(fh)
        self._producer = KafkaProducer(
            **client_config(bootstrap_servers, security), acks="all", retries=5
        )

    @contextmanager
    def _locked_ledger(self) -> Iterator[Any]:
        """The ledger file open for reading and appending, under an exclusive lock.

        ``flock`` on an open file excludes every other holder: the other consumer replicas on
        a shared volume (NFS and CephFS pass it on as a POSIX lock), ``fraud label publish``,
        and another publisher in this process."""
        with self.ledger_path.open("a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_new_entries(self, fh: Any) -> None:
        """What other publishers appended since this one last read."""
        fh.seek(self._ledger_end)
        for raw in fh:
            self._entries_read += 1
            try:
                entry = json.loads(raw)
                self._ledger[str(entry[c.TRANSACTION_ID])] = int(entry[c.LABEL])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{self.ledger_path}:{self._entries_read}: not a ledger entry ({err}); the "
                    "ledger is written by review-label publishers only"
                ) from err
            self._ledger_end += len(raw)

    def publish(self, outcome: Mapping[str, Any]) -> str:
        """Publish one outcome; returns PUBLISHED or ALREADY_PUBLISHED. Raises ValueError (bad
        outcome), LabelConflict (labelled otherwise before, by any publisher of this ledger) or
        the producer's error."""
        message = label_from_outcome(outcome)
        label = parse_label(message)
        assert not isinstance(label, Rejected)  # label_from_outcome checked it
        with self._lock, self._locked_ledger() as fh:
            self._read_new_entries(fh)
            before = self._ledger.get(label.transaction_id)
            if before == label.is_fraud:
                return ALREADY_PUBLISHED
            if before is not None:
                raise LabelConflict(
                    f"transaction {label.transaction_id} was labelled {c.LABEL}={before} "
                    f"before; a published label cannot be changed"
                )
            key = label.transaction_id.encode()
            future = self._producer.send(self.topic, key=key, value=message)
            future.get(timeout=self.send_timeout_s)
            self._append(fh, label.transaction_id, label.is_fraud)
        return PUBLISHED

    def _append(self, fh: Any, transaction_id: str, is_fraud: int) -> None:
        line = json.dumps({c.TRANSACTION_ID: transaction_id, c.LABEL: is_fraud}) + "\n"
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())
        self._ledger[transaction_id] = is_fraud
        self._ledger_end = fh.tell()
        self._entries_read += 1

    def close(self) -> None:
        self._producer.close(timeout=self.send_timeout_s)


def label_endpoint(publisher: ReviewLabelPublisher) -> Any:
    """A WSGI app for ``POST /labels``: the JSON body is one outcome (``label_from_outcome``).

    Answers 200 ``{"status": PUBLISHED | ALREADY_PUBLISHED, "transaction_id": ...}``; 400 naming
    what is wrong with the body; 409 for a conflicting outcome; 413 for a body over
    ``MAX_BODY_BYTES``; 503 when the broker did not take it (nothing recorded: retry)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        code, body = _answer(publisher, environ)
        reason = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 409: "Conflict"}
        reason |= {413: "Content Too Large", 503: "Service Unavailable"}
        start_response(f"{code} {reason[code]}", [("Content-Type", "application/json")])
        return [json.dumps(body).encode() + b"\n"]

    return app


def _answer(publisher: ReviewLabelPublisher, environ: dict[str, Any]) -> tuple[int, dict]:
    if environ.get("REQUEST_METHOD") != "POST":
        return 405, {"error": "POST one review outcome as a JSON object"}
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 400, {"error": f"bad Content-Length {environ.get('CONTENT_LENGTH')!r}"}
    if length > MAX_BODY_BYTES:
        return 413, {"error": f"body of {length} bytes; an outcome is at most {MAX_BODY_BYTES}"}
    try:
        outcome = json.loads(environ["wsgi.input"].read(length) or b"null")
    except ValueError as err:
        return 400, {"error": f"the body is not JSON: {err}"}
    try:
        status = publisher.publish(outcome)
    except LabelConflict as err:
        return 409, {"error": str(err)}
    except ValueError as err:
        return 400, {"error": str(err)}
    except Exception as err:  # noqa: BLE001 - the broker's failure, answered and logged
        log.error("review outcome not published: %s", err, exc_info=True)
        return 503, {"error": f"not published, retry: {type(err).__name__}: {err}"}
    return 200, {"status": status, c.TRANSACTION_ID: str(outcome[c.TRANSACTION_ID])}
