"""The shared store's link to Redis: the circuit breaker, and what its operations answer.

Every Redis call of a :class:`~actors._redis.RedisStore` goes through the breaker: after
``threshold`` consecutive failures Redis is skipped for ``cooldown`` seconds, then one call
probes it. A skipped or failed call raises :class:`Unavailable`, on which the shared source
falls back to its wrapped source. One loguru WARNING when the breaker opens, one when it closes.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import NamedTuple

from loguru import logger

from actors import _redis_scripts as lua

__all__ = ["Acquired", "Breaker", "Unavailable"]

_log = logger.bind(component="RedisStore")


class Unavailable(Exception):
    """Redis did not answer (or the breaker skips it): fall back to the wrapped source."""


class Acquired(NamedTuple):
    kind: str  # value | lease | wait
    token: str
    pttl_ms: int
    now_ms: int


class Breaker:
    """After ``threshold`` consecutive failures, skip Redis for ``cooldown`` seconds; then let
    one call probe it. One WARNING when it opens, one when it closes."""

    def __init__(self, where: str, *, threshold: int, cooldown: float) -> None:
        self._where = where
        self._threshold = threshold
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def closed(self) -> bool:
        return self._open_until is None

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
            _log.warning("Redis at {} answers again: the shared token tier is back", self._where)

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._failures += 1
            opens = self._open_until is None and self._failures >= self._threshold
            if opens or self._open_until is not None:  # opening, or a failed probe: (re)start
                self._open_until = time.monotonic() + self._cooldown
                self._probing = False
        if opens:
            _log.warning(
                "Redis at {} is failing ({}): tokens are fetched by each process directly, "
                "Redis is probed again every {:g}s",
                self._where,
                type(error).__name__,
                self._cooldown,
            )


_HANDED_MAX = 4096  # tokens remembered by digest, to act on invalidation notices
_DEAD_FOR = 60.0  # how long a noticed invalidation keeps a token from being served here


class TokenLedger:
    """Tokens this process handed to its cache (by digest, to act on notices that carry only a
    digest), and tokens lately invalidated here or elsewhere (never served again meanwhile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handed: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._dead: dict[str, tuple[float, int]] = {}  # digest -> (until, Redis ms or -1)

    def handed(self, token: str) -> None:
        digest = lua.digest(token)
        with self._lock:
            self._handed[digest] = token
            self._handed.move_to_end(digest)
            while len(self._handed) > _HANDED_MAX:
                self._handed.popitem(last=False)

    def token(self, digest: str) -> str | None:
        with self._lock:
            return self._handed.get(digest)

    def is_dead(self, token: str) -> bool:
        """Whether ``token`` was invalidated, here or by a notice, within the last minute."""
        return self._entry(token) is not None

    def noticed_at(self, token: str) -> int | None:
        """When (Redis time, ms) another process invalidated ``token``, if it did lately: it
        has dropped the shared value already, and a value written since may be served."""
        entry = self._entry(token)
        return entry[1] if entry is not None and entry[1] >= 0 else None

    def note_dead(self, digest: str, at_ms: int) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._dead) > _HANDED_MAX:
                self._dead = {d: e for d, e in self._dead.items() if e[0] > now}
            self._dead[digest] = (now + _DEAD_FOR, at_ms)

    def _entry(self, token: str) -> tuple[float, int] | None:
        digest = lua.digest(token)
        with self._lock:
            entry = self._dead.get(digest)
        return entry if entry is not None and time.monotonic() < entry[0] else None
