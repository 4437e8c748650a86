"""User grants kept by a store: the record, the one seam every store implements for them
(:class:`GrantBook`), the in-process book of a system without a store, and their encryption.

A user's grant is an access token with its refresh token. The refresh token works **once**
(``docs/feishu-protocol.md``, "User access tokens"), so a grant is rotated as one transaction
(``actors.users._rotation``): take the user's lease, re-read the grant, mark the rotation in
progress, redeem the refresh token, commit the new grant, release. The book's operations are
each atomic; :meth:`GrantBook.commit` is a compare-and-set on the grant's ``version``, which is
the fencing value: a holder that lost its lease (paused past it) cannot overwrite a grant
written after the one it read.

Times are wall-clock Unix milliseconds on the system clock's :func:`actors._clock.wall_time`
(processes on one store compare them; a ``ManualClock`` has a virtual wall of its own).
The tokens of a stored grant are sealed (:class:`Sealer`, Fernet) before they reach a file or
Redis: what a store keeps in the clear is who, which scope, until when, and the version.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import threading
from collections.abc import Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from actors._config import AppConfig
from actors._errors import StoreKeyError

__all__ = [
    "GrantBook",
    "MemoryGrants",
    "Sealer",
    "StoredGrant",
    "fernet_keys",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredGrant:
    """One user's grant as a book keeps it (tokens in the clear here; sealed at rest).

    ``version`` is the book's write version of the grant (0: never written); ``rotating`` is
    the version whose refresh token a holder sent to Feishu without committing an answer (the
    record of a rotation in progress, left behind by a holder that died); ``ended`` is the
    reason a definite refusal ended the grant (its tokens are empty then).
    """

    app_id: str
    open_id: str
    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    expires_at_ms: int
    refresh_expires_at_ms: int | None
    scope: tuple[str, ...] = ()
    granted_at_ms: int
    version: int = 0
    rotating: int | None = None
    ended: str | None = None

    def secrets(self) -> bytes:
        """The tokens, as the bytes a :class:`Sealer` seals, bound to whose they are: a sealed
        value moved to another user's record does not open there."""
        return json.dumps(
            [self.access_token, self.refresh_token, self.app_id, self.open_id]
        ).encode()

    @staticmethod
    def opened(raw: bytes, *, app_id: str, open_id: str) -> tuple[str, str | None]:
        """(access_token, refresh_token) from :meth:`secrets`' bytes, if they are the tokens of
        ``app_id``'s user ``open_id``; ValueError if malformed or another grant's."""
        value = json.loads(raw)
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not isinstance(value[0], str)
            or not (value[1] is None or isinstance(value[1], str))
        ):
            raise ValueError("sealed grant secrets are malformed")
        if value[2:] != [app_id, open_id]:
            raise ValueError("sealed grant secrets belong to another grant")
        return value[0], value[1]


class GrantBook(abc.ABC):
    """Where a system keeps user grants: one per store (``store.grants()``), or in memory.

    Every operation is atomic, answers, or raises ``actors.stores._shared.Unavailable`` (the
    backend did not answer; nothing was changed) or :class:`~actors._errors.StoreKeyError` (a
    grant is sealed with a key the book does not have; nothing was changed). Grants are keyed by
    the app's credentials (a ``credentials_digest``) and the user's open_id.
    """

    #: The name errors and logs give the book (``"SqliteStore /path"``, ``"memory"``).
    name: str = "memory"

    @abc.abstractmethod
    def read(self, app: AppConfig, user: str) -> StoredGrant | None:
        """The grant of ``user`` (live or ended), or None if there is none."""

    @abc.abstractmethod
    def lease(self, app: AppConfig, user: str, lease_id: str, *, lease_ms: int) -> int:
        """Take the user's rotation lease for ``lease_ms``: 0 if ``lease_id`` holds it now,
        otherwise how many ms the current holder's lease has left (> 0)."""

    @abc.abstractmethod
    def release(self, app: AppConfig, user: str, lease_id: str) -> None:
        """Drop the lease if ``lease_id`` still holds it; never raises."""

    @abc.abstractmethod
    def begin(self, app: AppConfig, user: str, lease_id: str, *, version: int) -> bool:
        """Record that the refresh token of grant ``version`` is about to be sent, if
        ``lease_id`` still holds the lease and the stored grant is still ``version``."""

    @abc.abstractmethod
    def commit(self, grant: StoredGrant, *, expect: int | None) -> int | None:
        """Write ``grant`` (its ``version`` is ignored) if the stored grant's version is
        ``expect`` (0: none stored; None: whatever is stored, a new login), clearing any
        rotation in progress: the new version, or None when another write came first."""

    @abc.abstractmethod
    def end(self, app: AppConfig, user: str, reason: str, *, expect: int) -> bool:
        """Mark grant ``expect`` ended for ``reason`` (its tokens erased) if it is still the
        stored one; whether it was."""

    @abc.abstractmethod
    def forget(self, app: AppConfig, user: str) -> bool:
        """Delete the user's grant (logout); whether there was one."""

    @abc.abstractmethod
    def grants(self, app: AppConfig) -> list[StoredGrant]:
        """Every live (not ended) grant of ``app``."""

    def check_writable(self) -> None:  # noqa: B027 - a hook: most books can always write
        """Raise ValueError (saying how to fix it) if this book cannot keep grants: a store
        without a key. Called before a login is redeemed."""


class MemoryGrants(GrantBook):
    """The grants of a system without a store: in this process's memory, lost at ``stop()``.
    The TokenActor already runs one rotation per user at a time, so the lease is a formality
    kept for the shared transaction's sake."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[tuple[str, str], StoredGrant] = {}
        self._leases: dict[tuple[str, str], str] = {}
        self._versions = 0

    def read(self, app: AppConfig, user: str) -> StoredGrant | None:
        with self._lock:
            return self._grants.get((app.app_id, user))

    def lease(self, app: AppConfig, user: str, lease_id: str, *, lease_ms: int) -> int:
        with self._lock:
            holder = self._leases.setdefault((app.app_id, user), lease_id)
            return 0 if holder == lease_id else lease_ms

    def release(self, app: AppConfig, user: str, lease_id: str) -> None:
        with self._lock:
            if self._leases.get((app.app_id, user)) == lease_id:
                del self._leases[(app.app_id, user)]

    def begin(self, app: AppConfig, user: str, lease_id: str, *, version: int) -> bool:
        key = (app.app_id, user)
        with self._lock:
            stored = self._grants.get(key)
            if self._leases.get(key) != lease_id or stored is None or stored.version != version:
                return False
            self._grants[key] = dataclasses.replace(stored, rotating=version)
            return True

    def commit(self, grant: StoredGrant, *, expect: int | None) -> int | None:
        key = (grant.app_id, grant.open_id)
        with self._lock:
            stored = self._grants.get(key)
            if expect is not None and (stored.version if stored else 0) != expect:
                return None
            self._versions += 1
            self._grants[key] = dataclasses.replace(
                grant, version=self._versions, rotating=None, ended=None
            )
            return self._versions

    def end(self, app: AppConfig, user: str, reason: str, *, expect: int) -> bool:
        key = (app.app_id, user)
        with self._lock:
            stored = self._grants.get(key)
            if stored is None or stored.version != expect:
                return False
            self._versions += 1
            self._grants[key] = dataclasses.replace(
                stored,
                access_token="",
                refresh_token=None,
                version=self._versions,
                rotating=None,
                ended=reason,
            )
            return True

    def forget(self, app: AppConfig, user: str) -> bool:
        with self._lock:
            return self._grants.pop((app.app_id, user), None) is not None

    def grants(self, app: AppConfig) -> list[StoredGrant]:
        with self._lock:
            return [
                g for (app_id, _), g in self._grants.items() if app_id == app.app_id and not g.ended
            ]


FernetKeys = str | bytes | Sequence[str | bytes]
KEY_ENV = "FEISHU_TOKEN_KEY"
_HOW = "a Fernet key (make one with: python -m actors keygen) or a non-empty list of them"


def fernet_keys(key: object, *, owner: str = "SqliteStore") -> tuple[bytes, ...]:
    """``key`` (None, one Fernet key, or a non-empty list of them) as the keys' bytes; a
    ValueError that says how to make one, and never quotes it, for anything else. ``owner``
    names the store in the message."""
    if key is None:
        return ()
    keys = [key] if isinstance(key, str | bytes) else key
    if not isinstance(keys, Sequence) or isinstance(keys, str | bytes) or not keys:
        msg = f"{owner} key must be {_HOW}"
        raise ValueError(msg)
    found = []
    for index, each in enumerate(keys):
        raw = each.encode() if isinstance(each, str) else each
        try:
            Fernet(raw)
        except (ValueError, TypeError):
            position = f" (item {index} of the list is not one)" if len(keys) > 1 else ""
            msg = f"{owner} key must be {_HOW}{position}"
            raise ValueError(msg) from None
        found.append(bytes(raw))
    return tuple(found)


class Sealer:
    """Encrypts grant secrets at rest with the store's Fernet keys: the first key seals, every
    key opens (so keys rotate: put the new one first, keep the old one until the grants were
    rewritten). Without a key (none given, and no ``FEISHU_TOKEN_KEY`` in the environment)
    :meth:`seal` raises ValueError saying how to make one; a store without a key still serves
    app and tenant tokens."""

    def __init__(
        self,
        keys: tuple[bytes, ...],
        *,
        owner: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.owner = owner
        if not keys:
            from_env = (os.environ if environ is None else environ).get(KEY_ENV, "").strip()
            if from_env:
                keys = fernet_keys(from_env.split(","), owner=f"{KEY_ENV} for {owner}")
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None

    @property
    def has_key(self) -> bool:
        return self._fernet is not None

    def check(self) -> None:
        if self._fernet is None:
            msg = (
                f"{self.owner} needs a key to keep user grants (they hold refresh tokens): "
                f"pass key=... or set {KEY_ENV}; make one with: python -m actors keygen"
            )
            raise ValueError(msg)

    def seal(self, plain: bytes) -> bytes:
        self.check()
        assert self._fernet is not None
        return self._fernet.encrypt(plain)

    def open(self, sealed: bytes) -> bytes:
        """The plain bytes; :class:`StoreKeyError` if no key opens them (nothing changes)."""
        if self._fernet is None:
            raise StoreKeyError(self.owner)
        try:
            return self._fernet.decrypt(sealed)
        except (InvalidToken, TypeError, ValueError):
            raise StoreKeyError(self.owner) from None
