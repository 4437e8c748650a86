"""Stores: state shared between processes and kept beyond one.

:class:`Store` is the contract a TokenSystem relies on (``TokenSystem.start(app, store=...)``);
each store wraps the system's token source, so the TokenActor's logic is the same with or
without one. :class:`SqliteStore` shares tokens, app_tickets and invalidations between the
processes of one host through one file (stdlib ``sqlite3``); :class:`RedisStore` does it for
processes on many hosts (the ``redis`` extra: imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.stores._base import Store as Store
from actors.stores._base import StoreHealth as StoreHealth
from actors.stores._sqlite import SqliteStore as SqliteStore

if TYPE_CHECKING:
    from actors.stores._redis import RedisStore as RedisStore

__all__ = ["RedisStore", "SqliteStore", "Store", "StoreHealth"]


def __getattr__(name: str) -> object:
    if name == "RedisStore":
        try:
            from actors.stores._redis import RedisStore  # noqa: PLC0415 - redis is optional
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            msg = 'RedisStore needs the redis extra: pip install "lark-token-actors[redis]"'
            raise ImportError(msg) from exc
        return RedisStore
    msg = f"module 'actors.stores' has no attribute {name!r}"
    raise AttributeError(msg)
