"""What one process holds of its users' grants: the last grant it saw of each, and the ones it
rotated but could not commit yet (the book did not answer), which it keeps trying to commit in
the background; such a grant is never dropped, only replaced by a newer one."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping

from loguru import logger

from actors._config import AppConfig
from actors._errors import ReauthorizationRequired
from actors.stores._grants import GrantBook, StoredGrant
from actors.stores._shared import Unavailable

__all__ = ["HeldGrants"]

_log = logger.bind(component="UserTokens")
_PERSIST_FIRST, _PERSIST_MAX = 0.05, 5.0  # backoff of a commit the book did not take


class HeldGrants:
    """The grants this process holds, per (app_id, open_id); thread-safe."""

    def __init__(
        self,
        book: GrantBook,
        *,
        apps: Mapping[str, AppConfig],
        closed: threading.Event,
        patience: float,
    ) -> None:
        self._book = book
        self._apps = apps
        self._closed = closed
        self._patience = patience  # how long a commit is retried before it goes to the background
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], StoredGrant] = {}  # the grant last seen, per user
        # Rotated, not committed yet: each grant with the version its commit must replace.
        self._unsaved: dict[tuple[str, str], tuple[StoredGrant, int | None]] = {}
        self._saver: threading.Thread | None = None

    def known(self, app_id: str, user: str) -> StoredGrant | None:
        """The newest grant of the user this process has: uncommitted, or last seen."""
        with self._lock:
            unsaved = self._unsaved.get((app_id, user))
            return unsaved[0] if unsaved is not None else self._known.get((app_id, user))

    def remember(self, grant: StoredGrant) -> None:
        with self._lock:
            key = (grant.app_id, grant.open_id)
            known = self._known.get(key)
            if known is None or grant.version >= known.version:
                self._known[key] = grant

    def drop(self, app_id: str, user: str) -> bool:
        """Forget the user here; whether an uncommitted grant was dropped with them."""
        with self._lock:
            self._known.pop((app_id, user), None)
            return self._unsaved.pop((app_id, user), None) is not None

    def unsaved(self, app_id: str) -> list[StoredGrant]:
        with self._lock:
            return [grant for (a, _), (grant, _) in self._unsaved.items() if a == app_id]

    def join(self, timeout: float) -> None:
        """After ``closed`` is set: wait for the background commits' thread."""
        saver = self._saver
        if saver is not None:
            saver.join(timeout)

    def commit(self, grant: StoredGrant, *, expect: int | None) -> StoredGrant:
        """Commit ``grant`` (kept in memory first), retrying while the book does not answer,
        for at most one lease; then hand it out uncommitted and keep trying in the
        background. A newer grant committed meanwhile wins over this one."""
        with self._lock:
            self._unsaved[(grant.app_id, grant.open_id)] = (grant, expect)
        give_up_at = time.monotonic() + self._patience
        delay = _PERSIST_FIRST
        while True:
            try:
                saved = self._save(grant, expect=expect)
            except Unavailable:
                if time.monotonic() + delay >= give_up_at or self._closed.wait(delay):
                    self._keep_unsaved(grant)
                    return grant
                delay = min(delay * 2, _PERSIST_MAX)
                continue
            return saved

    def _save(self, grant: StoredGrant, *, expect: int | None) -> StoredGrant:
        """One commit; raises Unavailable. Refused (another write came first): the newer
        stored grant, which this process then serves instead."""
        book, key = self._book, (grant.app_id, grant.open_id)
        version = book.commit(grant, expect=expect)
        if version is None:
            newer = book.read(self._apps_of(grant), grant.open_id)
            with self._lock:
                self._unsaved.pop(key, None)
            if newer is None or newer.ended:
                raise ReauthorizationRequired(
                    newer.ended if newer is not None and newer.ended else "unknown_user",
                    app_id=grant.app_id,
                    user=grant.open_id,
                )
            self.remember(newer)
            return newer
        saved = dataclasses.replace(grant, version=version, rotating=None)
        with self._lock:
            unsaved = self._unsaved.get(key)
            if unsaved is not None and unsaved[0] is grant:
                del self._unsaved[key]
        self.remember(saved)
        return saved

    def _keep_unsaved(self, grant: StoredGrant) -> None:
        """The book did not take ``grant`` (already in :attr:`_unsaved`): it serves from
        memory, and a thread commits it once the book answers."""
        _log.warning(
            "the store did not take user {}'s new grant; it is kept in memory and committed "
            "when the store answers again",
            grant.open_id,
        )
        with self._lock:
            self._known[(grant.app_id, grant.open_id)] = grant
            if self._saver is None or not self._saver.is_alive():
                self._saver = threading.Thread(
                    target=self._save_loop, name="actors-user-grants", daemon=True
                )
                self._saver.start()

    def save_unsaved(self, app_id: str, user: str) -> None:
        """Before a rotation: the grant this process could not commit goes first."""
        with self._lock:
            unsaved = self._unsaved.get((app_id, user))
        if unsaved is not None:
            grant, expect = unsaved
            try:
                self._save(grant, expect=expect)
            except Unavailable:
                pass

    def _save_loop(self) -> None:
        delay = _PERSIST_FIRST
        while not self._closed.wait(delay):
            with self._lock:
                pending = list(self._unsaved.values())
            if not pending:
                return
            try:
                for grant, expect in pending:
                    try:
                        self._save(grant, expect=expect)
                    except ReauthorizationRequired:
                        pass  # a newer grant won, or it ended: nothing left to commit
                delay = _PERSIST_FIRST
            except Unavailable:
                delay = min(delay * 2, _PERSIST_MAX)

    def _apps_of(self, grant: StoredGrant) -> AppConfig:
        return self._apps[grant.app_id]
