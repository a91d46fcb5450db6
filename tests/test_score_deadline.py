"""The decision deadline against a model server that takes requests and never answers.

A relay in front of the real model server accepts connections and, while it hangs, reads
nothing and answers nothing: what an overloaded or paused server, or a path that drops packets,
looks like to the client. The consumer's client gives each attempt 10 s and tries 3 times, so a
batch that waited for its answer would be held for 30 s; the score stage's model calls instead
keep to the deadline: one request per batch, the fallback decision at the deadline, and the
fallback-decided batches re-scored once the server answers again. Over REST and gRPC.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from stream_fixtures import MODEL_NAME, wait_for

from core import contract as c
from streaming.consumer_config import ConsumerConfig
from streaming.fetch_stage import Entry
from streaming.health import ConsumerHealth
from streaming.metrics import StreamMetrics
from streaming.score_stage import FallbackBacklog, ScoreStage, model_inputs
from streaming.scoring import PROTOCOLS, Scorer, ThresholdStore, build_model_client

T = TypeVar("T")

DEADLINE_S = 0.5
CLIENT_TIMEOUT_S = 10.0  # the consumer's default: each attempt's own timeout


class Relay:
    """TCP relay to ``upstream`` (host, port). While it hangs, new connections are held open
    and never read from, and open ones forward nothing more in either direction: nothing is
    answered. ``release`` closes the held connections and lets the open ones flow again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        with self._lock:
            self._flowing.set()
            held, self._held = self._held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.release()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.accepted += 1
                if not self._flowing.is_set():
                    self._held.append(conn)
                    continue
            upstream = socket.create_connection(self.upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass  # the other direction closed both
        finally:
            src.close()
            dst.close()


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def relay(model_server, protocol: str) -> Iterator[Relay]:
    if protocol == "grpc":
        host, port = model_server.grpc_target.rsplit(":", 1)
    else:
        parts = urlsplit(model_server.url)
        host, port = parts.hostname, parts.port
    running = Relay((host, int(port)))
    yield running
    running.close()


def batch(first: int, n: int = 3) -> tuple[list[Entry], list[dict[str, float]]]:
    entries, features = [], []
    for i in range(first, first + n):
        row = {
            c.TRANSACTION_ID: f"tx-{i}",
            c.TIMESTAMP: f"2025-03-0{1 + i % 9}T1{i % 10}:00:00Z",
            c.AMOUNT: 10.0 + 37.5 * i,
        }
        entries.append(Entry(0, i, 0, None, None, row=row))
        features.append(
            {name: float(1 + (i + k) % 4) for k, name in enumerate(c.STATEFUL_FEATURES)}
        )
    return entries, features


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def test_a_server_that_does_not_answer_gets_fallbacks_at_the_deadline_then_rescores(
    relay: Relay, protocol: str, model_server, model_base
) -> None:
    config = ConsumerConfig("unused:9092", decision_deadline_s=DEADLINE_S)
    backlog = FallbackBacklog(StreamMetrics())
    target = relay.url if protocol == "rest" else relay.url.removeprefix("http://")
    client = build_model_client(target, MODEL_NAME, CLIENT_TIMEOUT_S, protocol)
    scorer = Scorer(client, ThresholdStore(model_base))
    stage = ScoreStage(config, scorer, StreamMetrics(), ConsumerHealth(), backlog, lambda s: True)
    # The signature's dtypes are read once the server answers, before it stops answering.
    assert not stage.score(*batch(100)).fallback  # type: ignore[union-attr]
    relay.hang()
    accepted = relay.accepted

    first = batch(0)
    outcome, took = timed(lambda: stage.score(*first))
    # Decided at the deadline after the one request it sent: the request's timeout was cut to
    # the deadline, and no retry started after it (retries would have opened more connections).
    assert outcome is not None and outcome.fallback
    assert relay.accepted - accepted <= 1
    assert DEADLINE_S <= took < CLIENT_TIMEOUT_S
    backlog.keep(outcome)

    # With transactions awaiting their re-score, a new batch falls back at its first failure,
    # still within the deadline; so does a due re-score, which runs on the consumer's loop.
    second = batch(3)
    outcome, took = timed(lambda: stage.score(*second))
    assert outcome is not None and outcome.fallback
    assert took < CLIENT_TIMEOUT_S
    backlog.keep(outcome)
    rescore, took = timed(stage.rescore_due)
    assert rescore is None and took < CLIENT_TIMEOUT_S

    relay.release()
    rescores: list[Any] = []
    wait_for(lambda: rescores.append(stage.rescore_due()) or rescores[-1], 60, "a re-score")
    rescore = rescores[-1]
    entries, features = first[0] + second[0], first[1] + second[1]
    reference = build_model_client(model_server.url, MODEL_NAME).predict(
        model_inputs(entries, features)
    )
    assert rescore.taken == {0: len(entries)}
    assert rescore.outcome.scored is not None
    assert rescore.outcome.scored.scores == pytest.approx(list(reference.scores))

    outcome = stage.score(*batch(6))
    assert outcome is not None and not outcome.fallback
