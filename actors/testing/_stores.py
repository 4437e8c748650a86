"""Test support for stores: what a test waits for or checks that the store's users never need.

Each helper works for every store that shares tokens between processes (RedisStore and
SqliteStore, the :class:`~actors.stores._shared.SharedStore` kind)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.stores._shared import SharedStore

__all__ = ["noticed_count", "store_available", "store_faults", "wait_listening"]


def wait_listening(store: SharedStore, *, timeout: float) -> bool:
    """Block until ``store``'s notice listener is listening (notices posted from then on
    reach it); False if it is not within ``timeout`` seconds."""
    notices = store._notices
    return notices is not None and notices.listening.wait(timeout)


def store_available(store: SharedStore) -> bool:
    """False while ``store`` is skipped for now: a RedisStore's circuit breaker is open (after
    ``failure_threshold`` consecutive failures, until a probe succeeds), a SqliteStore's writes
    are failing (until one succeeds)."""
    return not store._failing()


def noticed_count(store: SharedStore) -> int:
    """How many invalidations (by token digest) ``store``'s process remembers: bounded, however
    many notices arrive."""
    return store._ledger.dead_count()


def store_faults(store: SharedStore) -> dict[str, int]:
    """How many unusable values ``store`` found and ignored, by fault."""
    return store.faults.counts()
