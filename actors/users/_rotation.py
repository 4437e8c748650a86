"""The rotation of a user's grant as one transaction, and the login that makes the grant.

A refresh token works once: the answer carries its successor and the old one is dead at once
(``docs/feishu-protocol.md``, "User access tokens"). So every rotation, in any process on the
grant's book, is: take the user's lease; re-read the grant (another process may have rotated
it: then use that one and redeem nothing); record the rotation in progress; redeem the refresh
token; commit the new grant (compare-and-set on the version read: a holder that lost its lease
cannot overwrite a newer grant); release. Within one process the TokenActor already runs one
refresh per user at a time; the book's lease does the same across processes.

The new grant is kept in this process's memory before it is committed, and handed to callers
only after the commit, or after the book failed to answer for a whole lease: then it stays
in memory and the commit is retried in the background until the book takes it. Nothing here
deletes a grant because of an ambiguous failure: only a definite refusal by Feishu ends one,
and only :meth:`UserSource.forget` removes one.

The one window that cannot be closed: a holder killed after Feishu answered and before the
commit. Its refresh token is dead and the new one died with it; the record of the rotation in
progress makes the next holder's refusal ``ReauthorizationRequired(reason="interrupted")``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loguru import logger

from actors._clock import Clock, wall_time
from actors._config import AppConfig, RefreshPolicy, TokenKind
from actors._errors import ReauthorizationRequired, SystemStoppedError, UpstreamError
from actors._events import EventHub, GrantExpiring
from actors._source import Grant, TokenRequest, TokenSource
from actors.stores._grants import GrantBook, MemoryGrants, StoredGrant
from actors.stores._shared import Unavailable
from actors.users._grant import GRANT_LIFETIME, UserGrant
from actors.users._held import HeldGrants

if TYPE_CHECKING:
    from actors.feishu._oauth import FeishuOAuth, UserTokens
    from actors.stores import Store

__all__ = ["UserSource", "seen_by_app"]

_log = logger.bind(component="UserTokens")

_LEASE_SLACK = 5.0  # a rotation's lease: one attempt's deadline and this much more
_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # a waiting process's re-reads of the grant
_SLACK_MS = 500  # as the shared tier's: a grant handed over must outlive the margin


class UserSource:
    """The system's token source with user grants: ``TokenKind.USER`` requests are rotations
    in ``book`` through ``oauth``; every other request goes to ``inner``. Thread-safe: the
    system's workers call it several at a time (never twice at once for one user)."""

    def __init__(
        self,
        inner: TokenSource,
        *,
        apps: Mapping[str, AppConfig],
        oauth: FeishuOAuth | None,
        book: GrantBook,
        store: Store | None = None,
        events: EventHub | None = None,
        policy: RefreshPolicy,
        clock: Clock,
        closed: threading.Event,
    ) -> None:
        self._inner = inner
        self._apps = apps
        self._oauth = oauth
        self._book = book
        self._store = store  # whose notices reach this process, and carry its logouts
        self._events = events
        self._notice_ms = round(policy.user_reauthorize_notice * 1000)
        self._told: set[tuple[str, str, int]] = set()  # grants GrantExpiring was published for
        self._clock = clock
        self._closed = closed
        self._lease_ms = round((sum(policy.request_timeout) + _LEASE_SLACK) * 1000)
        self._max_wait = 3 * self._lease_ms / 1000  # a holder, and two after it died
        self._min_ms = round(policy.safety_margin * 1000) + _SLACK_MS
        self._redeeming = threading.Condition()  # guards _in_flight; stop() waits on it
        self._in_flight = 0  # redemptions sent (or about to be) and not committed yet
        self._held = HeldGrants(book, apps=apps, closed=closed, patience=self._lease_ms / 1000)
        self._warned_memory = False

    # --- the TokenSource seam ------------------------------------------------------------------

    def fetch(self, request: TokenRequest) -> Grant:
        if request.kind is not TokenKind.USER:
            return self._inner.fetch(request)
        if self._closed.is_set():
            raise SystemStoppedError()
        return self._rotate(request.app, request.user or "", request)

    def resend_ticket(self, app: AppConfig) -> str | None:
        return self._inner.resend_ticket(app)

    # --- login, logout, listing ----------------------------------------------------------------

    def redeem(
        self, app: AppConfig, *, code: str, redirect_uri: str, code_verifier: str | None
    ) -> tuple[UserGrant, Grant]:
        """Exchange a login's code, learn the user, commit the grant (replacing any earlier
        one of theirs): the grant and the token to cache."""
        oauth = self._need_oauth()
        self._book.check_writable()  # before the code is spent: a store without its key
        sent_ms = self._wall_ms()  # the lifetimes count from before the request left
        tokens = oauth.exchange_code(
            app, code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        open_id = oauth.user_info(app, tokens.access_token)
        made = _stored(app, open_id, tokens, now_ms=sent_ms, granted_at_ms=sent_ms)
        if isinstance(self._book, MemoryGrants) and not self._warned_memory:
            self._warned_memory = True
            _log.warning(
                "user grants are kept in memory only and are lost at stop(): start the system "
                "with store=actors.SqliteStore(path, key=...) to keep users logged in"
            )
        saved = self._held.commit(made, expect=None)
        return self.user_grant(saved), self._grant(saved)

    def forget(self, app: AppConfig, user: str) -> bool:
        known = self._held.known(app.app_id, user)
        unsaved = self._held.drop(app.app_id, user)
        try:
            forgotten = self._book.forget(app, user) or unsaved
        except Unavailable:
            detail = "the store did not answer; the grant was not removed from it"
            raise UpstreamError(None, None, 1, detail=detail) from None
        if known is not None and known.access_token and self._store is not None:
            self._store.announce(known.access_token)  # the other processes drop it too
        return forgotten

    def grants(self, app: AppConfig) -> list[StoredGrant]:
        """The live grants the book keeps for ``app`` (what this process rotated and could not
        commit yet included)."""
        try:
            stored = {g.open_id: g for g in self._book.grants(app)}
        except Unavailable:
            stored = {}
        stored |= {g.open_id: g for g in self._held.unsaved(app.app_id)}
        for grant in stored.values():
            self._held.remember(grant)
        return list(stored.values())

    def user_grant(self, grant: StoredGrant) -> UserGrant:
        """``grant`` as an application sees it: no tokens, times on the system clock."""
        return seen_by_app(grant, self._clock)

    def drain(self, timeout: float) -> bool:
        """Stop starting redemptions and wait (up to ``timeout``) for those under way to be
        answered and committed: the system is stopping, and a refresh token sent is dead at
        Feishu whether or not its answer is kept. Whether none is left."""
        with self._redeeming:
            self._closed.set()
            return self._redeeming.wait_for(lambda: self._in_flight == 0, timeout)

    def join(self, timeout: float) -> None:
        """After the system's ``closed`` event is set: wait for the background commits' thread."""
        self._held.join(timeout)

    # --- the rotation --------------------------------------------------------------------------

    def _rotate(self, app: AppConfig, user: str, request: TokenRequest) -> Grant:
        self._held.save_unsaved(app.app_id, user)
        book, lease_id = self._book, secrets.token_hex(16)
        give_up_at = time.monotonic() + self._max_wait
        delay = _POLL_FIRST
        while True:
            try:
                left_ms = book.lease(app, user, lease_id, lease_ms=self._lease_ms)
            except Unavailable:
                return self._unshared(app, user, request)
            if left_ms == 0:
                break
            # Another process rotates this grant now: use what it commits.
            try:
                stored = book.read(app, user)
            except Unavailable:
                return self._unshared(app, user, request)
            if stored is not None and self._adoptable(stored, request):
                return self._adopt(stored)
            if time.monotonic() >= give_up_at:
                detail = "another process holds this user's rotation and committed nothing"
                raise UpstreamError(None, None, 1, detail=detail)
            if self._closed.wait(min(delay, left_ms / 1000)):
                raise SystemStoppedError()
            delay = min(delay * 2, _POLL_MAX)
        try:
            return self._rotate_held(app, user, request, lease_id)
        finally:
            book.release(app, user, lease_id)

    def _rotate_held(
        self, app: AppConfig, user: str, request: TokenRequest, lease_id: str
    ) -> Grant:
        book = self._book
        try:
            stored = book.read(app, user)
        except Unavailable:
            return self._unshared(app, user, request)
        if stored is None:
            raise ReauthorizationRequired("unknown_user", app_id=app.app_id, user=user)
        if stored.ended:
            raise ReauthorizationRequired(stored.ended, app_id=app.app_id, user=user)
        if self._adoptable(stored, request):
            return self._adopt(stored)
        self._check_redeemable(stored)
        try:
            if not book.begin(app, user, lease_id, version=stored.version):
                raise UpstreamError(None, None, 1, detail="the grant changed under the lease")
        except Unavailable:
            return self._unshared(app, user, request)
        with self._redeeming:
            if self._closed.is_set():  # stopping: a redemption now might never be committed
                raise SystemStoppedError()
            self._in_flight += 1
        try:
            self.reached("sending")
            try:
                tokens = self._need_oauth().refresh(app, stored.refresh_token or "", user=user)
            except ReauthorizationRequired as refused:
                return self._refused(stored, refused)
            self.reached("answered")
            wall_ms = self._wall_ms()
            new = _stored(app, user, tokens, now_ms=wall_ms, granted_at_ms=stored.granted_at_ms)
            saved = self._held.commit(new, expect=stored.version)
            self.reached("committed")
            return self._grant(saved)
        finally:
            with self._redeeming:
                self._in_flight -= 1
                self._redeeming.notify_all()

    def reached(self, point: str) -> None:
        """A rotation under the lease reached ``point``: ``sending`` (the rotation is recorded
        in progress, the refresh token not sent yet), ``answered`` (Feishu's answer is here,
        not committed), ``committed``. Nothing happens; a test that kills the process at one
        of them replaces this method."""

    def _unshared(self, app: AppConfig, user: str, request: TokenRequest) -> Grant:
        """The book does not answer. A refresh token works once, and another process may have
        redeemed this one already: nothing is redeemed without the book's lease. The access
        token this process holds serves while it is fresh (the cache keeps serving its own
        meanwhile, too); otherwise this attempt fails and is retried."""
        known = self._held.known(app.app_id, user)
        if known is not None and self._adoptable(known, request):
            return self._grant(known)
        detail = "the store did not answer; a user's grant is rotated only under its lease"
        raise UpstreamError(None, None, 1, detail=detail)

    def _adoptable(self, stored: StoredGrant, request: TokenRequest) -> bool:
        """Whether the stored grant answers ``request`` without a redemption: another process
        rotated it since this one last saw it (or this one never did), and its access token is
        not the one being replaced and outlives the safety margin."""
        if stored.ended:
            return False
        fresh = (
            stored.access_token != request.replaces
            and stored.expires_at_ms - self._wall_ms() > self._min_ms
        )
        if request.cause == "miss":
            return fresh  # nothing cached here: any usable token will do
        known = self._held.known(stored.app_id, stored.open_id)
        # The grant this process holds (a prewarm, a keep-alive): the rotation is ours to do.
        return fresh and (known is None or stored.version > known.version)

    def _adopt(self, stored: StoredGrant) -> Grant:
        self._held.remember(stored)
        return self._grant(stored)

    def _check_redeemable(self, stored: StoredGrant) -> None:
        app_id, user = stored.app_id, stored.open_id
        if stored.refresh_token is None:
            self._end(stored, "no_refresh_token")
            raise ReauthorizationRequired("no_refresh_token", app_id=app_id, user=user)
        ends = stored.refresh_expires_at_ms
        if ends is not None and ends <= self._wall_ms():
            self._end(stored, "expired")
            raise ReauthorizationRequired("expired", app_id=app_id, user=user)

    def _refused(self, stored: StoredGrant, refused: ReauthorizationRequired) -> Grant:
        """Feishu refused the stored refresh token. A "revoked" answer is also what a lost race
        looks like: a newer grant in the book wins; a rotation left in progress by a holder
        that died makes it "interrupted"."""
        app_id, user, reason = stored.app_id, stored.open_id, refused.reason
        if reason == "revoked":
            try:
                again = self._book.read(self._app_of(stored), user)
            except Unavailable:
                again = None
            if again is not None and not again.ended and again.version != stored.version:
                return self._adopt(again)
            if stored.rotating == stored.version:
                reason = "interrupted"
        self._end(stored, reason)
        raise ReauthorizationRequired(reason, app_id=app_id, user=user, code=refused.code)

    def _end(self, stored: StoredGrant, reason: str) -> None:
        self._held.drop(stored.app_id, stored.open_id)
        try:
            self._book.end(self._app_of(stored), stored.open_id, reason, expect=stored.version)
        except Unavailable:
            pass  # the next holder finds the same refusal
        _log.warning(
            "user {} of app {} must log in again: {}", stored.open_id, stored.app_id, reason
        )

    # --- small parts ---------------------------------------------------------------------------

    def _grant(self, grant: StoredGrant) -> Grant:
        """What the TokenActor caches: remaining lifetimes, counted on this process's clock."""
        if self._store is not None:
            self._store.handed(grant.access_token)
        wall_ms = self._wall_ms()
        ends_ms = grant.granted_at_ms + round(GRANT_LIFETIME * 1000)
        if ends_ms - wall_ms <= self._notice_ms and self._events is not None:
            told = (grant.app_id, grant.open_id, grant.granted_at_ms)
            if told not in self._told:
                self._told.add(told)
                by = self._clock.now() + (ends_ms - wall_ms) / 1000
                self._events.publish(GrantExpiring(grant.app_id, grant.open_id, by))
        refresh = grant.refresh_expires_at_ms
        return Grant(
            grant.access_token,
            (grant.expires_at_ms - wall_ms) / 1000,
            None if refresh is None else (refresh - wall_ms) / 1000,
        )

    def _wall_ms(self) -> int:
        return int(wall_time(self._clock) * 1000)

    def _need_oauth(self) -> FeishuOAuth:
        if self._oauth is None:
            msg = "this system's token source cannot redeem user tokens (it has no OAuth client)"
            raise ValueError(msg)
        return self._oauth

    def _app_of(self, grant: StoredGrant) -> AppConfig:
        return self._apps[grant.app_id]


def _stored(
    app: AppConfig, user: str, tokens: UserTokens, *, now_ms: int, granted_at_ms: int
) -> StoredGrant:
    refresh_in = tokens.refresh_expires_in
    return StoredGrant(
        app_id=app.app_id,
        open_id=user,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_at_ms=now_ms + round(tokens.expires_in * 1000),
        refresh_expires_at_ms=(
            None
            if tokens.refresh_token is None or refresh_in is None
            else now_ms + round(refresh_in * 1000)
        ),
        scope=tokens.scope,
        granted_at_ms=granted_at_ms,
    )


def seen_by_app(grant: StoredGrant, clock: Clock) -> UserGrant:
    """``grant`` as an application sees it: no tokens, its wall-clock times on ``clock``."""
    now, wall = clock.now(), wall_time(clock)

    def local(ms: int) -> float:
        return now + (ms / 1000 - wall)

    refresh = grant.refresh_expires_at_ms
    return UserGrant(
        app_id=grant.app_id,
        open_id=grant.open_id,
        scope=grant.scope,
        expires_at=local(grant.expires_at_ms),
        refresh_expires_at=None if refresh is None else local(refresh),
        granted_at=local(grant.granted_at_ms),
    )
