"""Looks at the test stack from inside one of its containers and prints one JSON object.

tests/test_image_stack.py feeds this file to ``python -`` in a container of the platform image
(the image has no tests/), so it reads with the image's own code:

  decisions BOOTSTRAP DATA   decided transaction ids on the decisions topic: distinct, total, and
                             how many DATA (the replayed file) does not know
  metrics URL                every sample name a Prometheus endpoint exposes, with its sum
  writes PATH...             the uid and gid, and for each directory whether a file can be made
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any


def decisions(bootstrap: str, data: str) -> dict[str, Any]:
    """Decided ids; for up to 5 replayed ids without a decision, where they are on the
    transactions topic and what the dead-letter topic says of them (a failure then explains
    itself)."""
    import orjson
    from kafka import KafkaConsumer

    from core import contract as c
    from core.dataio import read_transactions
    from core.settings import Topics
    from streaming.broker import read_at_rest
    from streaming.messages import DeadLetterFields as F

    topics = Topics()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        decided: dict[str, list[str]] = {}
        past_end: dict[str, int] = {}
        records, past_end[topics.decisions] = read_at_rest(consumer, topics.decisions)
        for r in records:
            tx = orjson.loads(r.value)[c.TRANSACTION_ID]
            decided.setdefault(tx, []).append(f"{r.partition}@{r.offset}")
        ids = Counter({tx: len(at) for tx, at in decided.items()})
        frame = read_transactions(data)
        known = set(frame[c.TRANSACTION_ID])
        result: dict[str, Any] = {
            "distinct": len(ids),
            "total": sum(ids.values()),
            "unknown": len(set(ids) - known),
        }
        published, past_end[topics.transactions] = read_at_rest(consumer, topics.transactions)
        position = {orjson.loads(r.value)[c.TRANSACTION_ID]: r for r in published}
        repeated = sorted(tx for tx, n in ids.items() if n > 1)[:5]
        if repeated:
            result["decided_twice"] = {
                tx: {
                    "at": f"{position[tx].partition}@{position[tx].offset}",
                    "decisions": decided[tx],
                }
                for tx in repeated
            }
        missing = sorted(set(position) - set(ids))[:5]
        if missing:
            # The decisions of the transactions next to each undecided one: a gap on the
            # decisions topic or none at all.
            by_position = {(r.partition, r.offset): tx for tx, r in position.items()}
            for tx in missing:
                r = position[tx]
                result.setdefault("neighbours", {})[tx] = {
                    f"{r.partition}@{o}": decided.get(by_position.get((r.partition, o), ""))
                    for o in (r.offset - 1, r.offset + 1)
                }
            where = {(position[tx].partition, position[tx].offset): tx for tx in missing}
            dead = {}
            for r in read_at_rest(consumer, topics.dead_letter)[0]:
                letter = orjson.loads(r.value)
                at = (letter[F.SOURCE_PARTITION], letter[F.SOURCE_OFFSET])
                if at in where:
                    dead[where[at]] = f"{letter[F.REASON_KIND]}: {letter[F.REASON]}"
            result["undecided"] = {
                tx: {
                    "at": f"{position[tx].partition}@{position[tx].offset}",
                    "dead_letter": dead.get(tx),
                }
                for tx in missing
            }
        result["read_past_end_offsets"] = past_end
    finally:
        consumer.close(autocommit=False)
    return result


def metrics(url: str) -> dict[str, float]:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def writes(*paths: str) -> dict[str, Any]:
    result: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "writable": {}}
    for path in paths:
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        try:
            with open(probe, "w") as f:
                f.write("x")
            os.remove(probe)
            result["writable"][path] = True
        except OSError as err:
            result["writable"][path] = err.strerror
    return result


COMMANDS = {"decisions": decisions, "metrics": metrics, "writes": writes}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
