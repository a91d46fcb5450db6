"""The model call off the consumer's loop, so that waiting for an answer can end at the decision
deadline.

A model server that accepts a request and never answers (overloaded, paused, a network path
that drops packets) or a name lookup that is retried holds a call far longer than the deadline:
the client's timeout per attempt times its attempts, and a lookup has no timeout of its own.
``ModelCalls.call`` runs the call on one daemon thread and waits at most the time given; past
it, the caller decides with the fallback. The call it stopped waiting for is left to finish: its
answer is dropped (the batch it was for is re-scored later), and no new call starts until it
has, so a server that does not answer is not sent a request per batch meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from streaming.scoring import ScoringUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)


class ModelCalls:
    """Runs calls one at a time on a daemon thread. ``call`` raises ``ScoringUnavailable``
    when the answer does not come in time, or while an earlier call it stopped waiting for is
    still unanswered; otherwise it returns what the call returns, or raises what it raises.
    Used from one thread (the consumer's loop)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._unanswered: tuple[Future[Any], float] | None = None  # (call, when it was made)
        self._thread = threading.Thread(target=self._run, name="model-call", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T], wait_s: float | None) -> T:
        """``fn()`` on the thread, waited for at most ``wait_s`` (None: until it ends)."""
        if self._unanswered is not None:
            earlier, made_at = self._unanswered
            if not earlier.done():
                raise ScoringUnavailable(
                    f"the model server has not answered a call made "
                    f"{time.monotonic() - made_at:.1f} s ago"
                )
            self._unanswered = None
            failed = earlier.exception()
            log.info(
                "a model call given up on %.1f s ago has ended (%s); its answer is dropped",
                time.monotonic() - made_at,
                f"{type(failed).__name__}: {failed}" if failed is not None else "answered",
            )
        future: Future[T] = Future()
        made_at = time.monotonic()
        self._jobs.put((future, fn))
        try:
            return future.result(timeout=None if wait_s is None else max(wait_s, 0.0))
        except FutureTimeout:
            self._unanswered = (future, made_at)
            raise ScoringUnavailable(
                f"no answer from the model server within {wait_s or 0:.2f} s"
            ) from None

    def close(self) -> None:
        """Let the thread end once the call it runs (if any) is over."""
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the waiting caller, or dropped with the call
                future.set_exception(err)
