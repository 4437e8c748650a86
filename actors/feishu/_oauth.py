"""The Feishu OAuth client: user access tokens from the token endpoints, and whose they are.

``docs/feishu-protocol.md`` ("User access tokens") is the contract. :class:`FeishuOAuth` redeems
an authorization code (:meth:`~FeishuOAuth.exchange_code`) or a refresh token
(:meth:`~FeishuOAuth.refresh`) on the v3 endpoint of the accounts host (``/oauth/v3/token``) or,
as a documented option, the v2 endpoint of the Open Platform host
(``/open-apis/authen/v2/oauth/token``): the same JSON body on both. :meth:`~FeishuOAuth.user_info`
learns the open_id of a user token (``GET /open-apis/authen/v1/user_info``).

A keyless app (``AppConfig(app_id, client_assertion=provider)``) sends a client assertion
instead of the client secret (RFC 7523; ``docs/feishu-protocol.md``, "Keyless apps"), always to
the v3 endpoint, whose host is the assertion's audience; its tenant token is the jwt-bearer grant
there (:func:`keyless_tenant_grant`, the source of ``actors.feishu._client`` for such apps).
The provider is called inside the attempt, once per request: a provider that raises, or
returns no string, fails that attempt with an :class:`~actors._errors.AuthError` that names the
exception's class only (a signing library's message may quote the key or the claims).

One call is one attempt over the transport of ``actors.feishu._client``, with its hardening: the
``(connect, read)`` timeout and an overall deadline of their sum, the body read in pieces and
capped, redirects never followed (the body carries the client secret or assertion and the
code or refresh token), upstream text redacted of every credential of the request, the request
body held in an object whose ``repr`` masks it, and the error raised detached from the frames
that held it.

Outcomes, by the user-token table ``USER_TOKEN_CODES`` of ``actors.feishu._protocol``:

- success is HTTP 200, code 0, no ``error`` field, a usable ``access_token`` and ``expires_in``
  (a finite number in (0, 1 day]); a refresh token comes only with ``offline_access``. A
  refresh token's ``refresh_token_expires_in`` must be a finite number in (0, 366 days]
  (missing or null: 7 days, as larksuite/cli assumes); any other value, like a malformed
  token, **fails the attempt** rather than yield a grant whose end is unknown: every lifetime
  this module returns is one the caller may keep;
- a refresh refused for good ends the grant: :class:`~actors._errors.ReauthorizationRequired`
  with the row's reason (20064 / 20073 ``revoked``: the caller re-reads its store for a newer
  grant first); the app's credentials, a malformed request or an access policy (20002, 20001,
  21000, ...) is an :class:`~actors._errors.AuthError`, which keeps the grant;
- a code exchange refused for good (any known refusal, and any other code with an HTTP 4xx: a
  code works once, so a retry cannot fare better) is an
  :class:`~actors._errors.AuthorizationCodeError`;
- 99991400 / HTTP 429 is a :class:`~actors._errors.RateLimitedError`; 20050, HTTP 5xx, network
  errors, timeouts, bodies that are not JSON and unknown codes are an
  :class:`~actors._errors.UpstreamError` (``attempts=1``): a grant is never ended on an
  ambiguous answer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit

import requests

from actors._config import AppConfig
from actors._errors import (
    AuthError,
    AuthorizationCodeError,
    ReauthorizationRequired,
    TokenError,
    UpstreamError,
)
from actors._source import Grant
from actors.feishu import _protocol as feishu
from actors.feishu._client import _answer, _attempt, _Form, _rate_limited, _send, _upstream_text

__all__ = [
    "FeishuOAuth",
    "UserTokens",
    "accounts_url",
    "assertion_audience",
    "authorize_endpoint",
    "client_credentials",
    "keyless_tenant_grant",
    "token_endpoint",
]

_VERSIONS = ("v3", "v2")
_HEADERS = {"Content-Type": feishu.CONTENT_TYPE}
# Request fields whose values must never come back out in an error or a log line.
_SECRET_FIELDS = ("client_secret", "client_assertion", "code", "code_verifier", "refresh_token")
_ERROR_FIELDS = ("error", "error_description", feishu.MSG_FIELD)
# Visible ASCII only: a token goes into an Authorization header, an open_id into keys and logs.
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
_OPEN_ID = re.compile(r"[\x21-\x7e]{1,256}")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True)
class UserTokens:
    """One successful answer of the token endpoint; its ``repr`` shows no token.

    ``refresh_token`` and ``refresh_expires_in`` are both None without ``offline_access``;
    lifetimes are seconds from the answer.
    """

    access_token: str = dataclasses.field(repr=False)
    expires_in: float
    refresh_token: str | None = dataclasses.field(repr=False)
    refresh_expires_in: float | None
    scope: tuple[str, ...]


def accounts_url(app: AppConfig) -> str:
    """The accounts host of ``app``'s domain (``https://accounts.feishu.cn`` for
    ``actors.FEISHU``, ``https://accounts.larksuite.com`` for ``actors.LARK``); any other
    base_url (a proxy, a test server) serves the accounts paths itself."""
    return feishu.ACCOUNTS_HOSTS.get(app.base_url, app.base_url)


def assertion_audience(app: AppConfig) -> str:
    """The ``aud`` a keyless app's client assertion is made for: the accounts host
    (``accounts.feishu.cn``, ``accounts.larksuite.com``; ``host:port`` for another base_url)."""
    return urlsplit(accounts_url(app)).netloc


def authorize_endpoint(app: AppConfig) -> str:
    """The authorize page the user's browser is sent to."""
    return accounts_url(app) + feishu.AUTHORIZE_PATH


def token_endpoint(app: AppConfig, *, version: str = "v3") -> str:
    """The token endpoint: v3 on the accounts host, v2 on the Open Platform host."""
    if version == "v3":
        return accounts_url(app) + feishu.OAUTH_V3_PATH
    if version == "v2":
        return app.base_url + feishu.OAUTH_V2_PATH
    raise ValueError(f"the token endpoint version must be 'v3' or 'v2', got {version!r}")


class FeishuOAuth:
    """The user-token endpoints over one pooled ``requests.Session``; every method is one
    attempt and blocks (call it from a worker thread)."""

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: tuple[float, float],
        version: str | None = None,
    ) -> None:
        """``version``: the token endpoint every app uses; None (default): each app's own
        ``AppConfig.user_token_endpoint``."""
        if version is not None and version not in _VERSIONS:
            raise ValueError(f"FeishuOAuth: version must be 'v3' or 'v2', got {version!r}")
        self._session = session
        self._timeout = timeout
        self._version = version

    def tenant_grant(self, app: AppConfig) -> Grant:
        """One attempt at a keyless self-built app's tenant token (:func:`keyless_tenant_grant`
        on this client's session and timeout)."""
        return keyless_tenant_grant(self._session, self._timeout, app)

    def exchange_code(
        self, app: AppConfig, *, code: str, redirect_uri: str, code_verifier: str | None
    ) -> UserTokens:
        """Redeem an authorization code (with its PKCE verifier, if the authorize request had
        a challenge); AuthorizationCodeError if Feishu refuses it."""
        values = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier is not None:
            values["code_verifier"] = code_verifier
        ask = _Ask(app, values, user=None)
        # This frame raises the error: it keeps the credentials only inside the masked request.
        del code, code_verifier, values
        return _settled(_attempt(self._redeem, ask))

    def refresh(self, app: AppConfig, refresh_token: str, *, user: str) -> UserTokens:
        """Redeem ``user``'s (the open_id's) refresh token, which dies whatever the outcome;
        ReauthorizationRequired if Feishu refuses it for good."""
        ask = _Ask(app, {"grant_type": "refresh_token", "refresh_token": refresh_token}, user)
        del refresh_token
        return _settled(_attempt(self._redeem, ask))

    def user_info(self, app: AppConfig, access_token: str) -> str:
        """The open_id of the user ``access_token`` belongs to (per app)."""
        bearer = _Bearer(app, access_token)
        del access_token
        return _settled(_attempt(self._user_info, bearer))

    def _redeem(self, ask: _Ask) -> UserTokens:
        app = ask.app
        # A client assertion is made for the accounts host: a keyless app always asks v3.
        version = "v3" if app.keyless else self._version or app.user_token_endpoint
        form = _token_form(app, ask.values)  # a keyless app's provider is called here
        answer = _send(
            self._session.post,
            token_endpoint(app, version=version),
            self._timeout,
            _HEADERS,
            body=form.body,
        )
        return _tokens(ask, form, *answer)

    def _user_info(self, bearer: _Bearer) -> str:
        url = bearer.app.base_url + feishu.USER_INFO_PATH
        answer = _send(self._session.get, url, self._timeout, bearer.headers)
        return _open_id(bearer, *answer)


@dataclasses.dataclass(frozen=True, slots=True)
class _Ask:
    """One request to the token endpoint: for which app, the grant's fields (the code or the
    refresh token: never in the ``repr``), and whose grant it rotates (None: a code exchange,
    which has no grant yet). The client's credentials join them when the request is sent."""

    app: AppConfig
    values: Mapping[str, str] = dataclasses.field(repr=False)
    user: str | None


class _Bearer:
    """The Authorization header of one call with a user token; its ``repr`` shows no token."""

    __slots__ = ("app", "headers", "secrets")

    def __init__(self, app: AppConfig, token: str) -> None:
        self.app = app
        self.headers = {"Authorization": f"Bearer {token}"}
        self.secrets = [token]

    def __repr__(self) -> str:
        return "<user_info request: Authorization masked>"


def _token_form(app: AppConfig, values: Mapping[str, str]) -> _Form:
    body = {"client_id": app.app_id, **client_credentials(app), **values}
    return _Form(body, secret_fields=_SECRET_FIELDS)


def client_credentials(app: AppConfig) -> dict[str, str]:
    """How ``app`` authenticates to the token endpoint: its ``client_secret``, or a client
    assertion fresh from its provider, asked for here (once per request, never kept).

    A provider that raises, or returns anything but a non-empty string, is an AuthError that
    names what it did and no more: nothing is sent.
    """
    provider = app.client_assertion
    if provider is None:
        return {"client_secret": app.app_secret or ""}
    try:
        assertion = provider(assertion_audience(app))
    except Exception as exc:  # the provider's own failure, whatever it is: one failed attempt
        # The class only: a signing library's message may quote the key, the claims or a path.
        said = f"the client_assertion provider raised {type(exc).__name__}; nothing was sent"
        raise AuthError(feishu.ASSERTION_FAILED, said) from None
    if not isinstance(assertion, str) or not assertion.strip():
        what = "an empty string" if isinstance(assertion, str) else type(assertion).__name__
        said = f"the client_assertion provider returned {what}, not a signed JWT; nothing was sent"
        raise AuthError(feishu.ASSERTION_EMPTY, said)
    return {"client_assertion_type": feishu.CLIENT_ASSERTION_TYPE, "client_assertion": assertion}


def keyless_tenant_grant(
    session: requests.Session, timeout: tuple[float, float], app: AppConfig
) -> Grant:
    """One attempt at a keyless self-built app's tenant token: the jwt-bearer grant on the v3
    token endpoint, answered ``{code: 0, access_token, expires_in}``. Raises the typed error of
    a failed attempt (to be detached by the caller's ``_attempt``)."""
    form = _token_form(app, {"grant_type": feishu.OAUTH_JWT_BEARER_GRANT})
    answer = _send(session.post, token_endpoint(app), timeout, _HEADERS, body=form.body)
    return _tenant_grant(form, *answer)


def _tenant_grant(form: _Form, status: int, headers: Mapping[str, str], content: bytes) -> Grant:
    """The tenant token of a jwt-bearer answer, or the typed error the answer stands for: the
    token endpoint's code table, where the app's refusals (20002: the assertion refused, 20001)
    are permanent and anything ambiguous is transient."""
    data = _answer(status, headers, content, form.secrets)
    code: int = data[feishu.CODE_FIELD]
    rule = feishu.user_rule_for(code, status)
    if rule is feishu.UserRule.OK and status == 200 and not data.get("error"):
        token = data.get("access_token")
        expires_in = _lifetime(data.get("expires_in"), feishu.MAX_EXPIRE)
        if not _usable_token(token) or expires_in is None:
            detail = "success body without a usable access_token / expires_in"
            raise UpstreamError(0, status, 1, detail=detail)
        return Grant(token, expires_in)
    detail = _detail(data, form.secrets)
    if rule is feishu.UserRule.RATE_LIMITED:
        raise _rate_limited(code, status, headers)
    if rule is feishu.UserRule.PERMANENT:
        raise AuthError(code, detail)
    raise UpstreamError(code, status, 1, detail=detail)


def _settled(outcome: R | TokenError) -> R:
    if isinstance(outcome, TokenError):
        raise outcome  # detached already: no frame of the attempt comes with it
    return outcome


def _tokens(
    ask: _Ask, form: _Form, status: int, headers: Mapping[str, str], content: bytes
) -> UserTokens:
    """The tokens of a success, or the typed error the answer stands for."""
    secrets = form.secrets
    data = _answer(status, headers, content, secrets)
    code: int = data[feishu.CODE_FIELD]
    rule = feishu.user_rule_for(code, status)
    if rule is feishu.UserRule.OK and status == 200 and not data.get("error"):
        return _user_tokens(data)
    detail = _detail(data, secrets)
    if rule is feishu.UserRule.RATE_LIMITED:
        raise _rate_limited(code, status, headers)
    if ask.user is None:
        if _login_refused(code, status, rule):
            raise AuthorizationCodeError(code, detail)
    elif rule is feishu.UserRule.REAUTHORIZE:
        reason = feishu.USER_TOKEN_CODES[code].reason or "invalid"
        raise ReauthorizationRequired(reason, code=code, app_id=ask.app.app_id, user=ask.user)
    elif rule is feishu.UserRule.PERMANENT:
        raise AuthError(code, detail)
    # Code 0 beside an error field or a status other than 200 is no success either.
    raise UpstreamError(code, status, 1, detail=detail)


def _login_refused(code: int, status: int, rule: feishu.UserRule) -> bool:
    """Whether a code exchange was refused for good: a known refusal, or any code the table
    does not know with an HTTP 4xx (a code works once: a retry cannot fare better)."""
    if rule in (feishu.UserRule.OK, feishu.UserRule.TRANSIENT):
        return code not in feishu.USER_TOKEN_CODES and 400 <= status < 500
    return True


def _user_tokens(data: Mapping[str, Any]) -> UserTokens:
    access = data.get("access_token")
    expires_in = _lifetime(data.get("expires_in"), feishu.MAX_EXPIRE)
    if not _usable_token(access) or expires_in is None:
        detail = "success body without a usable access_token / expires_in"
        raise UpstreamError(0, 200, 1, detail=detail)
    refresh = data.get("refresh_token")
    refresh_expires_in = None
    if refresh is not None:
        given = data.get("refresh_token_expires_in")
        if given is None:  # absent or null: larksuite/cli's default
            given = feishu.REFRESH_EXPIRE_DEFAULT
        refresh_expires_in = _lifetime(given, feishu.MAX_REFRESH_EXPIRE)
        if not _usable_token(refresh) or refresh_expires_in is None:
            detail = "success body without a usable refresh_token / refresh_token_expires_in"
            raise UpstreamError(0, 200, 1, detail=detail)
    return UserTokens(access, expires_in, refresh, refresh_expires_in, _scope(data.get("scope")))


def _lifetime(value: object, limit: float) -> float | None:
    usable = isinstance(value, int | float) and feishu.usable_expire(value, limit=limit)
    return float(value) if usable else None  # type: ignore[arg-type]  # a number, checked


def _usable_token(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _scope(value: object) -> tuple[str, ...]:
    """The granted scopes: Feishu writes them space-separated; a list is taken too."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(s for s in value if isinstance(s, str) and s)
    return ()


def _open_id(bearer: _Bearer, status: int, headers: Mapping[str, str], content: bytes) -> str:
    """The open_id in a user_info answer, or the typed error the answer stands for."""
    data = _answer(status, headers, content, bearer.secrets)
    code: int = data[feishu.CODE_FIELD]
    rule = feishu.user_rule_for(code, status)
    if rule is feishu.UserRule.OK and status == 200:
        info = data.get("data")
        open_id = info.get("open_id") if isinstance(info, dict) else None
        if isinstance(open_id, str) and _OPEN_ID.fullmatch(open_id):
            return open_id
        raise UpstreamError(0, status, 1, detail="user_info answered without a usable open_id")
    detail = _detail(data, bearer.secrets)
    if rule is feishu.UserRule.RATE_LIMITED:
        raise _rate_limited(code, status, headers)
    if rule is feishu.UserRule.TOKEN_INVALID:  # the token just issued was refused
        raise AuthError(code, detail)
    raise UpstreamError(code, status, 1, detail=detail)


def _detail(data: Mapping[str, Any], secrets: Sequence[str | None]) -> str:
    """What the answer says about a refusal (RFC 6749's ``error`` and ``error_description``,
    or Feishu's ``msg``), safe for messages and logs."""
    said = [data.get(name) for name in _ERROR_FIELDS]
    return _upstream_text(": ".join(s for s in said if isinstance(s, str) and s), secrets)
