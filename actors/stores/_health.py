"""What a shared store knows about its own health: the circuit breaker and the probe behind
a RedisStore's ``health()``, and the log of unusable values a store found.

Each is bounded: the breaker's state is a few numbers, the probe has at most one PING in
flight, and the fault log remembers a bounded number of (key, fault) pairs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from loguru import logger

__all__ = ["Breaker", "FaultLog", "Probe"]

_REPORTED_MAX = 4096  # (key, fault) pairs reported at WARNING; later ones at DEBUG


class Breaker:
    """After ``threshold`` consecutive failures, skip the backend for ``cooldown`` seconds;
    then let one call probe it. One WARNING when it opens, one when it closes, tagged with
    ``store`` (the store's name) and naming the ``backend`` (what fails, e.g. ``Redis``)."""

    def __init__(
        self, where: str, *, store: str, backend: str, threshold: int, cooldown: float
    ) -> None:
        self._where = where
        self._backend = backend
        self._log = logger.bind(component=store)
        self._threshold = threshold
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._last_error: str | None = None

    @property
    def closed(self) -> bool:
        return self._open_until is None

    @property
    def last_error(self) -> str | None:
        """The class name of the last failure seen (kept after the backend recovers)."""
        return self._last_error

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or time.monotonic() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            reopened = self._open_until is not None
            self._failures, self._open_until, self._probing = 0, None, False
        if reopened:
            self._log.warning(
                "{} at {} answers again: the shared token tier is back", self._backend, self._where
            )

    def saw(self, error: BaseException) -> None:
        """Remember ``error`` as the last one, without counting it as a failure."""
        self._last_error = type(error).__name__

    def failed(self, error: BaseException) -> None:
        self.saw(error)
        with self._lock:
            self._failures += 1
            opens = self._open_until is None and self._failures >= self._threshold
            if opens or self._open_until is not None:  # opening, or a failed probe: (re)start
                self._open_until = time.monotonic() + self._cooldown
                self._probing = False
        if opens:
            self._log.warning(
                "{} at {} is failing ({}): tokens are fetched by each process directly, "
                "{} is probed again every {:g}s",
                self._backend,
                self._where,
                type(error).__name__,
                self._backend,
                self._cooldown,
            )


class Probe:
    """Answers "does Redis answer now?" within ``timeout`` seconds, whatever Redis does.

    ``ping`` runs on a short-lived thread of its own (the client's socket timeouts end it), so
    a Redis that accepts connections and never answers (paused, overloaded) costs the caller
    ``timeout`` at most; concurrent callers share the PING in flight.
    """

    def __init__(self, ping: Callable[[], object], *, timeout: float) -> None:
        self._ping = ping
        self._timeout = timeout
        self._lock = threading.Lock()
        self._flight: _Flight | None = None

    def check(self) -> tuple[bool, BaseException | None]:
        """(answered, the error if it did not; None when it is still silent at the timeout)."""
        with self._lock:
            flight = self._flight
            if flight is None:
                flight = self._flight = _Flight()
                thread = threading.Thread(
                    target=self._run, args=(flight,), name="actors-redis-probe", daemon=True
                )
                flight.thread = thread
                thread.start()
        if not flight.done.wait(self._timeout):
            return False, None
        return flight.error is None, flight.error

    def join(self, timeout: float) -> None:
        with self._lock:
            flight = self._flight
        if flight is not None and flight.thread is not None:
            flight.thread.join(timeout)

    def _run(self, flight: _Flight) -> None:
        try:
            self._ping()
        except Exception as exc:  # redis-py's errors, socket errors
            flight.error = exc
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None


class FaultLog:
    """The unusable values a store found (and deleted), counted by fault: a WARNING once per
    key and fault (tagged with ``store``, the store's name), never with the value's bytes."""

    def __init__(self, *, store: str) -> None:
        self._log = logger.bind(component=store)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._reported: set[tuple[str, str]] = set()

    def report(self, key: str, fault: str, *, what: str = "token") -> None:
        """An unusable value was found at ``key``; an empty ``fault`` means none was."""
        if not fault:
            return
        with self._lock:
            self._counts[fault] += 1
            first = (key, fault) not in self._reported and len(self._reported) < _REPORTED_MAX
            if first:
                self._reported.add((key, fault))
        if first:
            self._log.warning(
                "ignored an unusable shared {} at {} ({}): it is not served, and is replaced "
                "by one from Feishu",
                what,
                key,
                fault,
            )
        else:
            self._log.debug("ignored an unusable shared {} at {} ({})", what, key, fault)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
