"""Test support for stores: what a test waits for or checks that the store's users never need."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # redis-py is an optional extra
    from actors.stores import RedisStore

__all__ = ["noticed_count", "store_available", "store_faults", "wait_listening"]


def wait_listening(store: RedisStore, *, timeout: float) -> bool:
    """Block until ``store``'s notice listener is subscribed (notices published from then on
    reach it); False if it is not within ``timeout`` seconds."""
    notices = store._notices
    return notices is not None and notices.listening.wait(timeout)


def store_available(store: RedisStore) -> bool:
    """False while ``store``'s circuit breaker skips Redis (after ``failure_threshold``
    consecutive failures, until a probe succeeds)."""
    return store._breaker.closed


def noticed_count(store: RedisStore) -> int:
    """How many invalidations (by token digest) ``store``'s process remembers: bounded, however
    many notices arrive."""
    return store._ledger.dead_count()


def store_faults(store: RedisStore) -> dict[str, int]:
    """How many unusable values ``store`` found and ignored, by fault."""
    return store.faults.counts()
