"""The user-token side of what the fake server knows: test users, authorization codes, and grants
with their chains of single-use refresh tokens, on the server's clock.

A grant is one user's authorization of one app, made by redeeming a code. While it lasts it holds
exactly one live refresh token; redeeming that token answers a new access token and a new
refresh token, and the old refresh token is dead at once (no grace window). Presenting a dead
one again is a *reuse*: answered 20064 and counted, because two redemptions of one refresh token
are what logs users out. Access tokens go into the server's :class:`Ledger`, where the business
routes check every bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field

from actors._clock import Clock
from actors.testing._ledger import Ledger, User
from actors.testing._protocol import USER, UserCode

__all__ = ["Grant", "Lifetimes", "OAuthApp", "Outcome", "Tokens", "UserLedger", "pkce_s256"]

OFFLINE_ACCESS = "offline_access"  # the scope without which no refresh token is issued
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 code_verifier


def pkce_s256(verifier: str) -> str:
    """The S256 ``code_challenge`` of ``verifier``: base64url(sha256), unpadded (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Lifetimes:
    """Seconds on the server's clock: access token, refresh token, authorization code, and how
    long after the user's consent the grant can be refreshed at all (365 days on Feishu)."""

    access_token: float = 7200.0
    refresh_token: float = 604800.0
    code: float = 300.0
    grant: float = 365 * 86400.0


@dataclass
class OAuthApp:
    """An app's OAuth settings in the developer console."""

    redirect_uris: frozenset[str] = frozenset()  # empty: any http(s) URL is accepted
    offline_access: bool = True  # the offline_access permission is enabled
    refresh_enabled: bool = True  # the security setting "refresh user_access_token"


@dataclass
class Grant:
    app_id: str
    user: User
    scope: tuple[str, ...]
    granted_at: float
    live_refresh: str | None = field(default=None, repr=False)
    access_tokens: list[str] = field(default_factory=list, repr=False)


@dataclass
class _Code:
    app_id: str
    user: User
    redirect_uri: str
    scope: tuple[str, ...]
    challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class _Refresh:
    grant: Grant
    expires_at: float
    used: bool = False
    revoked: bool = False


@dataclass(frozen=True)
class Tokens:
    """What a successful redemption answers (whole seconds, as Feishu writes them); a tenant
    token (the jwt-bearer grant) has no refresh token and no ``scope``."""

    access_token: str = field(repr=False)
    expires_in: int
    refresh_token: str | None = field(repr=False)
    refresh_token_expires_in: int | None
    scope: str | None


@dataclass(frozen=True)
class Outcome:
    """How a redemption went: the tokens or the refusal (with its ``error_description``, if
    not the code's usual one), whose grant it was, whether it reused a dead refresh token."""

    result: Tokens | UserCode
    user: User | None = None
    reuse: bool = False
    detail: str | None = None


class UserLedger:
    """Users, codes and grants. Not thread-safe: the server calls it under its lock."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock
        self.lifetimes = Lifetimes()
        self.users: dict[str, User] = {}
        self.signed_in: str | None = None
        self.apps: dict[str, OAuthApp] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._grants: list[Grant] = []

    def app(self, app_id: str) -> OAuthApp:
        return self.apps.setdefault(app_id, OAuthApp())

    def mint_code(
        self,
        app_id: str,
        user: User,
        redirect_uri: str,
        scope: tuple[str, ...],
        challenge: str | None,
    ) -> str:
        code = secrets.token_hex(16)
        expires_at = self._clock.now() + self.lifetimes.code
        self._codes[code] = _Code(app_id, user, redirect_uri, scope, challenge, expires_at)
        return code

    def owner(self, code: str | None, refresh_token: str | None) -> User | None:
        """Whose code or refresh token this is, if the server issued it."""
        if code is not None and code in self._codes:
            return self._codes[code].user
        if refresh_token is not None and refresh_token in self._refresh:
            return self._refresh[refresh_token].grant.user
        return None

    def exchange(
        self, app_id: str, code: str, redirect_uri: str | None, verifier: str | None
    ) -> Outcome:
        """Redeem an authorization code: once, within its lifetime, with the PKCE verifier."""
        issued = self._codes.get(code)
        if issued is None:
            return Outcome(UserCode.CODE_NOT_FOUND)
        user = issued.user
        if issued.app_id != app_id:
            return Outcome(UserCode.WRONG_APP, user)
        if issued.used:
            return Outcome(UserCode.CODE_USED, user)
        if issued.expires_at <= self._clock.now():
            return Outcome(UserCode.CODE_EXPIRED, user)
        if redirect_uri != issued.redirect_uri:
            return Outcome(UserCode.REDIRECT_MISMATCH, user)
        if issued.challenge is not None and not (
            verifier is not None
            and _VERIFIER.fullmatch(verifier)
            and secrets.compare_digest(pkce_s256(verifier), issued.challenge)
        ):
            return Outcome(UserCode.PKCE_FAILED, user)
        issued.used = True
        grant = Grant(app_id, user, issued.scope, self._clock.now())
        self._grants.append(grant)
        settings = self.app(app_id)
        offline = OFFLINE_ACCESS in issued.scope and settings.offline_access
        return Outcome(self._issue(grant, refresh=offline and settings.refresh_enabled), user)

    def refresh(self, app_id: str, refresh_token: str) -> Outcome:
        """Redeem a refresh token: it dies at once, and the answer carries its successor."""
        issued = self._refresh.get(refresh_token)
        if issued is None:
            return Outcome(UserCode.REFRESH_INVALID)
        grant = issued.grant
        if grant.app_id != app_id:
            return Outcome(UserCode.WRONG_APP, grant.user)
        if issued.used:
            return Outcome(UserCode.REFRESH_REVOKED, grant.user, reuse=True)
        if issued.revoked:
            return Outcome(UserCode.REFRESH_REVOKED, grant.user)
        if not self.app(app_id).refresh_enabled:
            return Outcome(UserCode.REFRESH_DISABLED, grant.user)
        now = self._clock.now()
        if issued.expires_at <= now or self._grant_ends(grant) <= now:
            return Outcome(UserCode.REFRESH_EXPIRED, grant.user)
        issued.used = True
        return Outcome(self._issue(grant, refresh=True), grant.user)

    def revoke(self, open_id: str, app_id: str | None) -> None:
        """The user withdrew the authorization: every code, access and refresh token dies."""
        for code in self._codes.values():
            if code.user.open_id == open_id and app_id in (None, code.app_id):
                code.used = True
        for grant in self._grants:
            if grant.user.open_id == open_id and app_id in (None, grant.app_id):
                for token in grant.access_tokens:
                    self._ledger.forget(token)
                grant.access_tokens.clear()
                if grant.live_refresh is not None:
                    self._refresh[grant.live_refresh].revoked = True
                    grant.live_refresh = None

    def grant_alive(self, open_id: str, app_id: str | None) -> bool:
        """Whether the user holds a refresh token of the app that can be redeemed now."""
        now = self._clock.now()
        return any(
            grant.user.open_id == open_id
            and app_id in (None, grant.app_id)
            and grant.live_refresh is not None
            and self._refresh[grant.live_refresh].expires_at > now
            and self._grant_ends(grant) > now
            for grant in self._grants
        )

    def _issue(self, grant: Grant, *, refresh: bool) -> Tokens:
        now, lifetimes = self._clock.now(), self.lifetimes
        access = f"u-{secrets.token_hex(16)}"
        user = grant.user
        self._ledger.record(
            access, grant.app_id, USER, user.tenant_key, lifetimes.access_token, user=user
        )
        # Expired ones are already refused by the ledger; keep the list as long as the live ones.
        alive = [t for t in grant.access_tokens if self._ledger.alive(t) is not None]
        grant.access_tokens = [*alive, access]
        refresh_token, refresh_expires_in = None, None
        if refresh:
            refresh_token = f"ur-{secrets.token_hex(16)}"
            expires_at = min(now + lifetimes.refresh_token, self._grant_ends(grant))
            self._refresh[refresh_token] = _Refresh(grant, expires_at)
            grant.live_refresh = refresh_token
            refresh_expires_in = int(expires_at - now)
        scope = " ".join(grant.scope)
        return Tokens(access, int(lifetimes.access_token), refresh_token, refresh_expires_in, scope)

    def _grant_ends(self, grant: Grant) -> float:
        return grant.granted_at + self.lifetimes.grant
