"""The OAuth side of the fake Feishu server: the authorize page and the user-token endpoints.

``docs/feishu-protocol.md`` ("User access tokens") is the contract:

- ``GET /open-apis/authen/v1/authorize?client_id&redirect_uri&scope&state[&code_challenge
  &code_challenge_method=S256]``: the signed-in test user consents at once, and the answer is a
  302 to ``redirect_uri?code=...&state=...`` (``error=access_denied`` when told to decline);
- ``POST /oauth/v3/token`` and ``POST /open-apis/authen/v2/oauth/token`` (the same rules on
  both), JSON ``{grant_type, client_id, client_secret, ...}``: ``authorization_code`` redeems a
  code once, within its lifetime, with its PKCE verifier; ``refresh_token`` redeems a refresh
  token once and answers its successor. A dead refresh token presented again is answered 20064
  and counted (:attr:`OAuthApi.refresh_reuses`);
- keyless apps (registered with a public key) authenticate on ``/oauth/v3/token`` with a client
  assertion (``client_assertion_type`` + ``client_assertion``) instead of ``client_secret``,
  verified by ``_assertions`` (signature, ``iss``/``sub``, ``aud`` = the fake's ``host:port``,
  ``exp``, ``iat``, a ``jti`` used once) and counted (:attr:`OAuthApi.assertions`); a refused
  one is answered 20002 ``invalid_client``. Their tenant token is the grant
  ``urn:ietf:params:oauth:grant-type:jwt-bearer``, answered ``{code: 0, access_token,
  expires_in, token_type}`` from the same ledger (and 30-minute rule) as the secret endpoint's.

Success is HTTP 200 ``{code: 0, access_token, expires_in, refresh_token,
refresh_token_expires_in, scope, token_type: "Bearer"}`` (no refresh token without the
``offline_access`` scope); a refusal is HTTP 400 (20050: 500) ``{code, error,
error_description}`` (:func:`oauth_error`, also for scripted replies). Requests are recorded as
kinds ``"authorize"`` and ``"user"`` (the jwt-bearer tenant grant too: it is a request to the
token endpoint), scripted and held like the other token requests; a token request's body
(secret, assertion, code, refresh token) is never kept. ``user_info`` and the business route
that takes user tokens live in ``_business``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from actors._clock import Clock
from actors._config import TokenKind
from actors.feishu._protocol import CODE_FIELD
from actors.testing._assertions import JWT_BEARER_GRANT
from actors.testing._clients import ClientAuth
from actors.testing._ledger import Ledger, User
from actors.testing._protocol import (
    AUTHORIZE,
    AUTHORIZE_PATH,
    OAUTH_V2_PATH,
    OAUTH_V3_PATH,
    USER,
    UserCode,
)
from actors.testing._replies import Headers, RecordedRequest, Reply, dump_json
from actors.testing._users import Lifetimes, Outcome, Tokens, UserLedger

__all__ = ["OAuthApi", "Redemption", "oauth_error"]

_TOKEN_PATHS = frozenset({OAUTH_V3_PATH, OAUTH_V2_PATH})
_ROUTES = {("GET", AUTHORIZE_PATH): AUTHORIZE} | {("POST", p): USER for p in _TOKEN_PATHS}
_AUTHORIZATION_CODE = "authorization_code"
_REFRESH_TOKEN = "refresh_token"

# RFC 6749 error names, which Feishu's answers carry beside the code.
_ERRORS = {
    UserCode.BAD_REQUEST: "invalid_request",
    UserCode.BAD_CLIENT: "invalid_client",
    UserCode.SERVER_ERROR: "server_error",
    UserCode.REFRESH_DISABLED: "unauthorized_client",
    UserCode.BLOCKED: "access_denied",
}
_DESCRIPTIONS = {
    UserCode.CODE_NOT_FOUND: "The authorization code is not found.",
    UserCode.CODE_EXPIRED: "The authorization code has expired.",
    UserCode.CODE_USED: "The authorization code has been used.",
    UserCode.REFRESH_INVALID: "The refresh token is invalid.",
    UserCode.REFRESH_EXPIRED: "The refresh token has expired.",
    UserCode.REFRESH_REVOKED: "The refresh token has been revoked.",
    UserCode.REFRESH_USED: "The refresh token has been used.",
    UserCode.WRONG_APP: "The code or refresh token belongs to another app.",
    UserCode.REFRESH_DISABLED: "The app has not enabled refreshing user access tokens.",
    UserCode.SERVER_ERROR: "Internal server error.",
    UserCode.BLOCKED: "Blocked by an access control policy.",
    UserCode.BAD_REQUEST: "A parameter is missing or malformed.",
    UserCode.BAD_CLIENT: "The client_id or client_secret is invalid.",
    UserCode.PKCE_FAILED: "The code_verifier does not match the code_challenge.",
    UserCode.REDIRECT_MISMATCH: "The redirect_uri does not match.",
}


def oauth_error(code: int, description: str | None = None, *, status: int | None = None) -> Reply:
    """A refusal as the user-token endpoints write it: ``{code, error, error_description}``
    with HTTP 400 (500 for 20050), e.g. ``server.script("user", oauth_error(20037))``."""
    try:
        known = UserCode(code)
        error, text = _ERRORS.get(known, "invalid_grant"), _DESCRIPTIONS.get(known, "error")
    except ValueError:  # a code the fake does not send itself
        error, text = "invalid_grant", "error"
    body = {CODE_FIELD: code, "error": error, "error_description": description or text}
    default = 500 if code == UserCode.SERVER_ERROR else 400
    return Reply.raw(dump_json(body), status=status if status is not None else default)


@dataclass(frozen=True)
class Redemption:
    """One request to a token endpoint that the fake answered itself (not a scripted reply):
    when (server clock), where, for which app and user (``user``: the open_id the code or
    refresh token belongs to, None if the server never issued it), the grant type, the code
    answered (0: success), and whether it presented a refresh token already redeemed."""

    at: float
    path: str
    app_id: str | None
    user: str | None
    grant_type: str | None
    code: int
    reuse: bool = False


@dataclass(frozen=True)
class _Lost:
    reply: Reply
    user: str | None


class OAuthApi:
    """The user-token side of one FakeFeishu (``server.oauth``), over its ledger.

    :meth:`identify` and :meth:`answer` run under the server's lock (passed in); the public
    methods take it themselves. Users sign in for every app; an app's OAuth settings
    (:meth:`configure`) default to any redirect URI, offline_access enabled, refresh enabled.
    """

    def __init__(
        self, ledger: Ledger, lock: threading.Lock, clock: Clock, *, audience: Callable[[], str]
    ) -> None:
        """``audience()``: the ``host:port`` client assertions must be addressed to (``aud``),
        the one the server stands for."""
        self._ledger = ledger
        self._lock = lock
        self._users = UserLedger(ledger, clock)
        self._redemptions: list[Redemption] = []
        self._lost: list[_Lost] = []
        self._deny = 0
        self._clients = ClientAuth(ledger, clock, audience=audience)

    # --- steering and inspection -----------------------------------------------------------

    def add_user(
        self,
        open_id: str,
        *,
        name: str | None = None,
        tenant_key: str = "fake-tenant",
        union_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Register (or replace) a test user, who answers ``user_info`` with these fields
        (``union_id`` made from the open_id unless given); the first one added is signed in."""
        if not open_id:
            raise ValueError("FakeFeishu.oauth.add_user: open_id must not be empty")
        user = User(
            open_id,
            name if name is not None else f"Test user {open_id}",
            tenant_key,
            union_id if union_id is not None else f"on_{open_id.removeprefix('ou_')}",
            user_id,
        )
        with self._lock:
            self._users.users[open_id] = user
            if self._users.signed_in is None:
                self._users.signed_in = open_id

    def sign_in(self, open_id: str) -> None:
        """Make ``open_id`` the browser's signed-in user: the one who consents on the authorize
        page from now on."""
        with self._lock:
            self._known(open_id)
            self._users.signed_in = open_id

    def deny_next(self, times: int = 1) -> None:
        """The next ``times`` visits of the authorize page decline: the redirect carries
        ``error=access_denied`` (and the ``state``), no code."""
        with self._lock:
            self._deny += times

    def configure(
        self,
        app_id: str,
        *,
        redirect_uris: Iterable[str] | None = None,
        offline_access: bool | None = None,
        refresh_enabled: bool | None = None,
    ) -> None:
        """An app's console settings: the allowed redirect URIs (empty: any), whether the
        offline_access permission is enabled (without it no refresh token is issued), and the
        "refresh user_access_token" switch (off: no refresh token, and refreshes answer 20074).
        Settings left None keep their value."""
        with self._lock:
            app = self._users.app(app_id)
            if redirect_uris is not None:
                app.redirect_uris = frozenset(redirect_uris)
            if offline_access is not None:
                app.offline_access = offline_access
            if refresh_enabled is not None:
                app.refresh_enabled = refresh_enabled

    def set_lifetimes(
        self,
        *,
        access_token: float | None = None,
        refresh_token: float | None = None,
        code: float | None = None,
        grant: float | None = None,
    ) -> None:
        """Lifetimes on the server's clock for what is issued from now on, in seconds (defaults:
        7200, 604800, 300, and 365 days from the user's consent until no refresh succeeds)."""
        given = {"access_token": access_token, "refresh_token": refresh_token}
        given |= {"code": code, "grant": grant}
        for name, value in given.items():
            if value is not None and not (math.isfinite(value) and value >= 1):
                raise ValueError(f"FakeFeishu.oauth: {name} lifetime must be >= 1 s: {value!r}")
        with self._lock:
            changes = {k: float(v) for k, v in given.items() if v is not None}
            self._users.lifetimes = replace(self._users.lifetimes, **changes)

    @property
    def lifetimes(self) -> Lifetimes:
        with self._lock:
            return self._users.lifetimes

    def issue_code(
        self,
        app_id: str,
        redirect_uri: str,
        *,
        user: str | None = None,
        scope: Iterable[str] = ("offline_access",),
        code_challenge: str | None = None,
    ) -> str:
        """An authorization code as the authorize page would redirect with, for ``user`` (default:
        the signed-in user), without the HTTP round trip: for setting up many users."""
        with self._lock:
            params = {"client_id": app_id, "redirect_uri": redirect_uri}
            if code_challenge is not None:
                params |= {"code_challenge": code_challenge, "code_challenge_method": "S256"}
            refusal = self._check_authorize(params)
            if refusal is not None:
                raise ValueError(f"FakeFeishu.oauth.issue_code: refused with {refusal!r}")
            who = self._known(user if user is not None else self._signed_in())
            return self._users.mint_code(app_id, who, redirect_uri, tuple(scope), code_challenge)

    def revoke(self, open_id: str, *, app_id: str | None = None) -> None:
        """The user withdraws the authorization of ``app_id`` (or of every app): their access
        tokens are refused (99991668), their refresh tokens answer 20064 (not a reuse), their
        unredeemed codes 20065."""
        with self._lock:
            self._users.revoke(open_id, app_id)

    def lose_answer(self, reply: Reply | None = None, *, user: str | None = None) -> None:
        """The next successful refresh (of ``user``'s grant, or anyone's) goes through on the
        server — the refresh token dies, the new pair is valid — but the client receives
        ``reply`` instead (default: the connection closes without an answer). What a client
        killed between Feishu's answer and its commit leaves behind."""
        with self._lock:
            self._lost.append(_Lost(reply if reply is not None else Reply.disconnect(), user))

    def grant_alive(self, open_id: str, *, app_id: str | None = None) -> bool:
        """Whether ``open_id`` still holds a redeemable refresh token (of ``app_id``, or of any
        app): the chain of rotations is unbroken."""
        with self._lock:
            return self._users.grant_alive(open_id, app_id)

    @property
    def redemptions(self) -> list[Redemption]:
        """A copy of every token-endpoint request the fake answered itself, in order (a ledger
        of the grants' chains: ``server.reset_stats()`` leaves it alone)."""
        with self._lock:
            return list(self._redemptions)

    @property
    def refresh_reuses(self) -> int:
        """Refresh tokens presented after they were already redeemed (each answered 20064)."""
        with self._lock:
            return sum(1 for r in self._redemptions if r.reuse)

    @property
    def assertions(self) -> int:
        """Client assertions verified and accepted (each authenticated one token request)."""
        with self._lock:
            return self._clients.accepted

    @property
    def refused_assertions(self) -> int:
        """Client assertions presented and refused (each answered 20002)."""
        with self._lock:
            return self._clients.refused

    def rotations(self, open_id: str | None = None) -> int:
        """Successful refreshes (of ``open_id``'s grants, or of all)."""
        with self._lock:
            return sum(
                1
                for r in self._redemptions
                if r.grant_type == _REFRESH_TOKEN and r.code == 0 and open_id in (None, r.user)
            )

    # --- the server side, under the server's lock ------------------------------------------

    @staticmethod
    def route(method: str, path: str) -> str | None:
        """The kind a request to ``path`` is recorded under, if it is an OAuth route."""
        return _ROUTES.get((method, path))

    def identify(
        self,
        kind: str,
        line: tuple[str, str, str],
        headers: Headers,
        body: Mapping[str, object] | None,
        now: float,
    ) -> RecordedRequest:
        """The record of an OAuth request: the app it names and the owner of the code or refresh
        token it carries (its ``tenant_key``), never the body."""
        method, path, query = line
        if kind == AUTHORIZE:
            app_id, owner = _params(query).get("client_id"), None
        else:
            app_id = _str(body, "client_id")
            owner = self._users.owner(_str(body, "code"), _str(body, _REFRESH_TOKEN))
        tenant_key = owner.tenant_key if owner is not None else None
        return RecordedRequest(
            path, kind, app_id, tenant_key, now, method=method, query=query, headers=headers
        )

    def answer(self, req: RecordedRequest, body: Mapping[str, object] | None) -> Reply:
        """The answer to an OAuth request (made by :meth:`identify`) that no script took."""
        if req.kind == AUTHORIZE:
            return self._authorize(_params(req.query))
        if body is None:
            return oauth_error(UserCode.BAD_REQUEST, "The body is not a JSON object.")
        grant_type = _str(body, "grant_type")
        outcome = self._redeem(req.path, grant_type, body)
        code = outcome.result if isinstance(outcome.result, UserCode) else 0
        user = outcome.user.open_id if outcome.user is not None else None
        record = Redemption(req.at, req.path, req.app_id, user, grant_type, code, outcome.reuse)
        self._redemptions.append(record)
        if isinstance(outcome.result, UserCode):
            return oauth_error(outcome.result, outcome.detail)
        if grant_type == _REFRESH_TOKEN:
            lost = next((x for x in self._lost if x.user in (None, user)), None)
            if lost is not None:
                self._lost.remove(lost)
                return lost.reply
        return _tokens_reply(outcome.result)

    def _redeem(self, path: str, grant_type: str | None, body: Mapping[str, object]) -> Outcome:
        client_id = _str(body, "client_id") or ""
        asserted = "client_assertion" in body or "client_assertion_type" in body
        refusal = self._clients.refusal(path, client_id, body)
        if refusal is not None:
            return refusal
        if grant_type == JWT_BEARER_GRANT:
            if not asserted:
                text = "The jwt-bearer grant is for keyless apps: send a client assertion."
                return Outcome(UserCode.BAD_REQUEST, detail=text)
            token, seconds = self._ledger.grant(client_id, TokenKind.TENANT, None)
            return Outcome(Tokens(token, seconds, None, None, None))
        if grant_type == _AUTHORIZATION_CODE:
            code = _str(body, "code")
            if not code:
                return Outcome(UserCode.BAD_REQUEST)
            redirect_uri, verifier = _str(body, "redirect_uri"), _str(body, "code_verifier")
            return self._users.exchange(client_id, code, redirect_uri, verifier)
        refresh_token = _str(body, _REFRESH_TOKEN)
        if grant_type != _REFRESH_TOKEN or not refresh_token:
            return Outcome(UserCode.BAD_REQUEST)
        return self._users.refresh(client_id, refresh_token)

    def _authorize(self, params: Mapping[str, str]) -> Reply:
        refusal = self._check_authorize(params)
        if refusal is not None:
            return oauth_error(refusal)
        if self._users.signed_in is None:
            return oauth_error(UserCode.BAD_REQUEST, "No test user: call oauth.add_user() first.")
        redirect_uri, state = params["redirect_uri"], params.get("state")
        if self._deny:
            self._deny -= 1
            return _redirect(redirect_uri, {"error": "access_denied", "state": state})
        code = self._users.mint_code(
            params["client_id"],
            self._users.users[self._users.signed_in],
            redirect_uri,
            tuple(params.get("scope", "").split()),
            params.get("code_challenge"),
        )
        return _redirect(redirect_uri, {"code": code, "state": state})

    def _check_authorize(self, params: Mapping[str, str]) -> UserCode | None:
        app_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        if not app_id or app_id not in self._ledger.apps:
            return UserCode.BAD_CLIENT
        if not redirect_uri or urlsplit(redirect_uri).scheme not in ("http", "https"):
            return UserCode.BAD_REQUEST
        allowed = self._users.app(app_id).redirect_uris
        if allowed and redirect_uri not in allowed:
            return UserCode.REDIRECT_MISMATCH
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if (challenge is None) != (method is None) or method not in (None, "S256"):
            return UserCode.BAD_REQUEST
        return None

    def _known(self, open_id: str) -> User:
        user = self._users.users.get(open_id)
        if user is None:
            raise ValueError(f"FakeFeishu.oauth: no test user {open_id!r}; add_user() first")
        return user

    def _signed_in(self) -> str:
        if self._users.signed_in is None:
            raise ValueError("FakeFeishu.oauth: no test user is signed in; add_user() first")
        return self._users.signed_in


def _tokens_reply(tokens: Tokens) -> Reply:
    body: dict[str, object] = {
        CODE_FIELD: 0,
        "access_token": tokens.access_token,
        "expires_in": tokens.expires_in,
    }
    if tokens.refresh_token is not None:
        body["refresh_token"] = tokens.refresh_token
        body["refresh_token_expires_in"] = tokens.refresh_token_expires_in
    if tokens.scope is not None:
        body["scope"] = tokens.scope
    body["token_type"] = "Bearer"
    return Reply.raw(dump_json(body))


def _redirect(uri: str, params: Mapping[str, str | None]) -> Reply:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    location = urlunsplit(parts._replace(query=query))
    return Reply.http(302, "", headers={"Location": location})


def _params(query: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(query).items()}


def _str(body: Mapping[str, object] | None, key: str) -> str | None:
    value = body.get(key) if body is not None else None
    return value if isinstance(value, str) else None
