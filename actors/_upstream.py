"""Upstream calls from the TokenActor's point of view: the fetch queue under the concurrency
cap, and the jobs that run on worker threads and report back as messages.

Nothing here blocks the actor: a job runs on the WorkerPool and ends with a ``tell``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger
from sortedcontainers import SortedList

from actors import _messages as m
from actors._clock import Clock
from actors._config import AppConfig, TokenKey
from actors._errors import TokenError, UpstreamError, detached, plain_traceback
from actors._source import Grant, TokenRequest, TokenSource

__all__ = ["Upstream", "WorkerPool"]


class Upstream:
    """At most ``cap`` fetches in flight; the rest wait, most urgent deadline first.

    Owned by the TokenActor and only touched from its thread.
    """

    def __init__(
        self,
        *,
        source: TokenSource,
        pool: WorkerPool,
        clock: Clock,
        cap: int,
        ref: pykka.ActorRef[Any],
    ) -> None:
        self._source = source
        self._pool = pool
        self._clock = clock
        self._cap = cap
        self._ref = ref  # FetchDone and ResendDone go there
        self._queue: SortedList = SortedList()  # (deadline, seq, request)
        self._seq = itertools.count()
        self.in_flight = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, request: TokenRequest, deadline: float) -> list[TokenKey]:
        """Queue one fetch; returns the keys that could not start because the pool is closed."""
        if not self._queue and self.in_flight < self._cap:  # a free slot: nothing to order
            return self._submit(request)
        self._queue.add((deadline, next(self._seq), request))
        return self.start_queued()

    def finished(self) -> list[TokenKey]:
        """A FetchDone arrived: free its slot and start what waits."""
        self.in_flight -= 1
        return self.start_queued()

    def start_queued(self) -> list[TokenKey]:
        refused = []
        while self.in_flight < self._cap and self._queue:
            refused += self._submit(self._queue.pop(0)[2])
        return refused

    def _submit(self, request: TokenRequest) -> list[TokenKey]:
        try:
            self._pool.submit(self._fetch_job(request))
        except RuntimeError:  # the pool shut down: the system is stopping
            return [request.key]
        self.in_flight += 1
        return []

    def clear(self) -> None:
        self._queue.clear()

    def resend_ticket(self, app: AppConfig) -> bool:
        """Ask Feishu to push the app_ticket again (outside the cap); False if stopping."""
        source, ref = self._source, self._ref

        def job() -> None:
            error: Exception | None = None
            ticket: str | None = None
            try:
                ticket = source.resend_ticket(app)
            except Exception as exc:  # reported back as a message
                error = detached(exc)
            if ticket is not None and not (isinstance(ticket, str) and ticket.strip()):
                ticket = None  # a source's nonsense is no ticket; the wait's deadline still runs
            tell(ref, m.ResendDone(app.app_id, error, ticket))

        try:
            self._pool.submit(job)
        except RuntimeError:
            return False
        return True

    def _fetch_job(self, request: TokenRequest) -> Any:
        source, clock, ref = self._source, self._clock, self._ref
        key = request.key

        def job() -> None:
            started = clock.now()
            result: Grant | Exception
            try:
                result = source.fetch(request)
                if not isinstance(result, Grant):
                    detail = f"the token source returned {type(result).__name__}, not a Grant"
                    result = UpstreamError(None, None, 1, detail=detail)
            except TokenError as exc:
                result = detached(exc)  # the source's frames hold the request's credentials
            except Exception as exc:  # any surprise is one failed attempt
                result = UpstreamError(None, None, 1, detail=type(exc).__name__)
            tell(ref, m.FetchDone(key, result, started, clock.now() - started))

        return job


def tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:  # the system stopped while this call was in flight
        pass


Job = Callable[[], None]


class WorkerPool:
    """Up to ``size`` daemon threads, started on demand, fed from one queue."""

    def __init__(self, size: int, *, name: str = "actors-fetch") -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._busy = 0  # jobs submitted and not yet finished
        self._closed = False

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                msg = "worker pool is shut down"
                raise RuntimeError(msg)
            self._busy += 1
            # Every unfinished job gets a thread of its own, up to size: a job never waits
            # behind another while the pool has room.
            if self._busy > len(self._threads) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                # Started under the lock: shutdown() must never see (and join) a thread that is
                # in the list but not started yet.
                thread.start()
                self._threads.append(thread)
        self._jobs.put(job)

    @property
    def busy(self) -> int:
        return self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Block until every submitted job has finished (and delivered its result message)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._busy == 0, timeout=timeout)

    def shutdown(self, timeout: float) -> bool:
        """Stop accepting jobs, let running ones finish, join the threads; False if any is left.

        A thread blocked in an HTTP call ends by itself within the request's read timeout.
        """
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():  # stop() called from a job
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            logger.warning("worker threads still in an upstream call after stop(): {}", alive)
        return not alive

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # a job reports its own errors; this is a last resort
                logger.error("worker job failed:\n{}", plain_traceback(exc))
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()
