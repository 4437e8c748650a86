"""Worker threads that run blocking upstream calls off the actors' mailboxes.

A deliberately small pool (instead of ``concurrent.futures``) because the system needs two things
the executor does not give: a join with a deadline on stop(), and ``wait_idle()`` so that
``settle()`` knows when no upstream call is running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from loguru import logger

from actors._mask import plain_traceback

__all__ = ["WorkerPool"]

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
