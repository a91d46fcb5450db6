"""The decision deadline against a model server that takes requests and never answers.

A relay in front of the real model server accepts connections and, while it hangs, reads
nothing and answers nothing: what an overloaded or paused server, or a path that drops packets,
looks like to the client. The consumer's client gives each attempt 10 s and tries 3 times, so a
batch that waited for its answer would be held for 30 s; the score stage instead decides it with
the fallback at the deadline, sends no further request while the first is unanswered, and
re-scores the fallback-decided batch once the server answers again.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from stream_fixtures import MODEL_NAME, wait_for

from core import contract as c
from streaming.consumer_config import ConsumerConfig
from streaming.fetch_stage import Entry
from streaming.health import ConsumerHealth
from streaming.metrics import StreamMetrics
from streaming.score_stage import FallbackBacklog, ScoreStage, model_inputs
from streaming.scoring import Scorer, ThresholdStore, build_model_client

DEADLINE_S = 0.5


class Relay:
    """TCP relay to ``upstream`` (host, port); while ``hang`` is set, new connections are held
    open and never read from or answered. ``release`` closes the held ones and relays again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.hang = threading.Event()
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def release(self) -> None:
        with self._lock:
            self.hang.clear()
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
                if self.hang.is_set():
                    self._held.append(conn)
                    continue
            upstream = socket.create_connection(self.upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass  # the other direction closed both
    finally:
        src.close()
        dst.close()


@pytest.fixture
def relay(model_server) -> Iterator[Relay]:
    parts = urlsplit(model_server.url)
    running = Relay((parts.hostname, parts.port))
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


def test_a_server_that_does_not_answer_gets_fallbacks_at_the_deadline_then_rescores(
    relay: Relay, model_server, model_base
) -> None:
    config = ConsumerConfig("unused:9092", decision_deadline_s=DEADLINE_S)
    backlog = FallbackBacklog(StreamMetrics())
    scorer = Scorer(build_model_client(relay.url, MODEL_NAME), ThresholdStore(model_base))
    stage = ScoreStage(config, scorer, StreamMetrics(), ConsumerHealth(), backlog, lambda s: True)
    try:
        relay.hang.set()
        first = batch(0)
        outcome = stage.score(*first)
        # Decided while the one request it sent is still unanswered: it did not wait out the
        # client's timeouts and retries (those would have opened 3 connections).
        assert outcome is not None and outcome.fallback
        assert (relay.accepted, relay.held()) == (1, 1)
        backlog.keep(outcome)

        # Nothing more is sent to a server that has not answered: the next batch falls back.
        outcome = stage.score(*batch(3))
        assert outcome is not None and outcome.fallback
        assert relay.accepted == 1
        backlog.keep(outcome)
        assert stage.rescore_due() is None
        assert relay.accepted == 1

        relay.release()
        rescores = []
        wait_for(lambda: rescores.append(stage.rescore_due()) or rescores[-1], 60, "a re-score")
        rescore = rescores[-1]
        entries, features = first[0] + batch(3)[0], first[1] + batch(3)[1]
        reference = build_model_client(model_server.url, MODEL_NAME).predict(
            model_inputs(entries, features)
        )
        assert rescore.taken == {0: len(entries)}
        assert rescore.outcome.scored is not None
        assert rescore.outcome.scored.scores == pytest.approx(list(reference.scores))

        outcome = stage.score(*batch(6))
        assert outcome is not None and not outcome.fallback
    finally:
        stage.close()
