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
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    from core import contract as c
    from core.dataio import read_transactions
    from core.settings import Topics

    topic = Topics().decisions
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        parts = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        ids: Counter[str] = Counter()
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=500).values():
                ids.update(orjson.loads(r.value)[c.TRANSACTION_ID] for r in records)
    finally:
        consumer.close(autocommit=False)
    known = set(read_transactions(data)[c.TRANSACTION_ID])
    return {"distinct": len(ids), "total": sum(ids.values()), "unknown": len(set(ids) - known)}


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
