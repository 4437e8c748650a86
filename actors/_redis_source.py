"""SharedSource: a TokenSystem's token source behind a :class:`~actors._redis.RedisStore`.

``fetch(request)``:

1. One script reads the value and, if there is none to serve (missing, within the safety margin
   plus a little, or the very token the caller replaces), takes the lease (``SET NX PX``).
2. ``cause == "invalidate"`` (found invalid here): the same script first compare-and-deletes
   the shared value if it still holds ``request.replaces`` and publishes the token's sha256
   once, so every process drops it from L1; the others' own refreshes then wait for this one.
   (A refresh that follows another process's notice skips that step and serves a value written
   after the invalidation, even the same token if upstream handed it out again.)
3. The winner calls the wrapped source, writes the value with a monotone compare-and-set and
   releases the lease only if it is still its own. Losers poll (5 ms doubling to 50 ms) until a
   value they may use appears: another token, or the replaced one written again after they
   started (upstream's same-token answer). When the lease expires without a value (its holder
   died mid-fetch) the next poll takes it; after three lease periods a loser gives up with an
   ``UpstreamError`` (the TokenActor retries with backoff). Nobody fetches without the lease
   unless Redis is down.
4. Redis failing (the store's ``Unavailable``): the wrapped source is called directly; the
   TokenActor still has one fetch per key in flight in this process.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Protocol, cast

from actors import _feishu as feishu
from actors import _redis_scripts as lua
from actors._config import AppConfig, RefreshPolicy
from actors._errors import SystemStoppedError, UpstreamError
from actors._redis_link import Unavailable
from actors._source import Grant, TokenRequest, TokenSource

if TYPE_CHECKING:
    from actors._redis_link import Acquired


class SharedStore(Protocol):
    """What a SharedSource needs of its store (``actors._redis.RedisStore``): Redis's scripts
    and tickets, and the process's own ledger of tokens. A protocol, so this module does not
    import the store (which builds SharedSources)."""

    lease: float | None
    ticket_poll: float | None
    prefix: str

    @property
    def closed(self) -> bool: ...

    def acquire(
        self,
        keys: lua.Keys,
        lease_id: str,
        *,
        lease_ms: int,
        replaces: str,
        min_ms: int,
        since: int,
        invalidate: str = "",
    ) -> Acquired: ...

    def write(
        self, keys: lua.Keys, token: str, ttl_ms: int, started_ms: int
    ) -> tuple[bool, str, int]: ...

    def release(self, keys: lua.Keys, lease_id: str) -> None: ...

    def get_ticket(self, app_id: str) -> str | None: ...

    def known_ticket(self, app_id: str) -> str | None: ...

    def note_ticket(self, app_id: str, ticket: str) -> None: ...

    def put_ticket(self, app_id: str, ticket: str) -> bool: ...

    def sleep(self, seconds: float) -> bool: ...

    def handed(self, grant: Grant) -> Grant: ...

    def is_dead(self, token: str) -> bool: ...

    def noticed_at(self, token: str) -> int | None: ...


__all__ = ["SharedSource"]

# A shared value is served only with this much more than the safety margin left, so that the
# reader's clock, counting from before the read, still finds it servable.
_SLACK_MS = 500
_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # a loser's polls for the holder's value
_TICKET_POLL_MAX = 0.25


class SharedSource:
    """The :class:`TokenSource` of a TokenSystem with a :class:`RedisStore`: Redis first, one
    process per key upstream (``inner``), the others wait for its value."""

    def __init__(self, store: SharedStore, inner: TokenSource, policy: RefreshPolicy) -> None:
        self._store = store
        self._inner = inner
        lease = store.lease if store.lease is not None else sum(policy.request_timeout) + 2.0
        self._lease_ms = max(1, round(lease * 1000))
        self._max_wait = 3 * lease  # a holder, and up to two more after it died
        self._min_ms = round(policy.safety_margin * 1000) + _SLACK_MS
        self._ticket_poll = store.ticket_poll
        if self._ticket_poll is None:
            self._ticket_poll = policy.ticket_wait / 2

    @property
    def inner(self) -> TokenSource:
        return self._inner

    def fetch(self, request: TokenRequest) -> Grant:
        store = self._store
        if store.closed:
            raise SystemStoppedError()
        keys = lua.Keys.of(store.prefix, request.app.app_id, request.kind, request.tenant_key)
        since, invalidate = -1, ""
        if request.cause == "invalidate" and request.replaces:
            noticed = store.noticed_at(request.replaces)
            if noticed is None:  # found invalid here: drop it from Redis, tell the others
                invalidate = request.replaces
            else:  # another process's notice: it dropped the value; serve what came since
                since = noticed
        try:
            return self._shared(request, keys, since, invalidate)
        except Unavailable:
            pass
        if store.closed:
            raise SystemStoppedError()
        # Redis is down: this process fetches for itself (its TokenActor still single-flights).
        return store.handed(self._inner.fetch(request))

    def _shared(self, request: TokenRequest, keys: lua.Keys, since: int, invalidate: str) -> Grant:
        """``since`` < 0: the first read never serves ``request.replaces``; later reads (and a
        first one with ``since`` >= 0) do if it was written at or after ``since``.
        ``invalidate``: the first read drops that token from Redis and tells the others."""
        store = self._store
        lease_id = secrets.token_hex(16)
        excluded = request.replaces or ""
        give_up_at: float | None = None
        delay = _POLL_FIRST
        while True:
            got = store.acquire(
                keys,
                lease_id,
                lease_ms=self._lease_ms,
                replaces=excluded,
                min_ms=self._min_ms,
                since=since,
                invalidate=invalidate,
            )
            invalidate = ""
            if since < 0:
                since = got.now_ms
            if got.kind == "value":
                if got.token == excluded or not store.is_dead(got.token):
                    return store.handed(Grant(got.token, got.pttl_ms / 1000))
                excluded, since = got.token, got.now_ms  # invalidated elsewhere a moment ago
                continue
            if got.kind == "lease":
                return self._hold(request, keys, lease_id, got.now_ms)
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self._max_wait
            elif now >= give_up_at:
                detail = "shared store: no token from the processes holding the lease"
                raise UpstreamError(None, None, 1, detail=detail)
            if store.sleep(min(delay, max(got.pttl_ms, 1) / 1000)):
                raise SystemStoppedError()
            delay = min(delay * 2, _POLL_MAX)

    def _hold(self, request: TokenRequest, keys: lua.Keys, lease_id: str, started: int) -> Grant:
        store = self._store
        try:
            grant = self._inner.fetch(request)
        except BaseException:
            store.release(keys, lease_id)
            raise
        answer = grant
        try:
            expire = grant.expire
            # A lifetime the TokenActor will refuse (NaN, too long, within the margin) is not
            # shared: the caller gets it and reports the failed attempt.
            if feishu.usable_expire(expire) and expire * 1000 > self._min_ms:
                written, kept, pttl = store.write(keys, grant.token, round(expire * 1000), started)
                if not written and kept != request.replaces and not store.is_dead(kept):
                    answer = Grant(kept, pttl / 1000)  # a longer-lived token is shared already
        except Unavailable:
            pass  # Redis went away meanwhile: the grant is still good for this process
        finally:
            store.release(keys, lease_id)  # after the write: waiters find the value first
        return store.handed(answer)

    def resend_ticket(self, app: AppConfig) -> str | None:
        """The app_ticket in Redis if this process has not used it yet; otherwise ask Feishu to
        push it again and wait (up to ``ticket_poll``) for a process to share a new one."""
        store = self._store
        try:
            first = store.get_ticket(app.app_id)
        except Unavailable:
            return self._inner.resend_ticket(app)
        if first is not None and first != store.known_ticket(app.app_id):
            store.note_ticket(app.app_id, first)
            return first
        pushed = self._inner.resend_ticket(app)
        if isinstance(pushed, str) and pushed:
            store.put_ticket(app.app_id, pushed)
            return pushed
        deadline = time.monotonic() + cast(float, self._ticket_poll)
        delay = 0.05
        while (left := deadline - time.monotonic()) > 0:
            if store.sleep(min(delay, left)):
                return None
            delay = min(delay * 2, _TICKET_POLL_MAX)
            try:
                ticket = store.get_ticket(app.app_id)
            except Unavailable:
                return None
            if ticket is not None and ticket != first:
                store.note_ticket(app.app_id, ticket)
                return ticket
        return None
