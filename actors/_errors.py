"""The error hierarchy. Every message says what happened and what to do; none carries a secret
or a whole token.

::

    TokenError
    ├── AuthError              permanent credential problem (10003, 10014, 99991543)
    ├── UpstreamError          transient failure that outlived max_attempts
    │   └── RateLimitedError   99991400 / HTTP 429, carries retry_after
    ├── AppTicketError         a marketplace app has no valid app_ticket
    └── SystemStoppedError     the TokenSystem was stopped

Bad arguments (unknown app_id, tenant_key on a self-built app, invalid config) raise
:class:`ValueError`.
"""

from __future__ import annotations

import copy
import json
import re
import traceback
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

__all__ = [
    "REAUTHORIZATION_REASONS",
    "AppTicketError",
    "AuthError",
    "AuthorizationCodeError",
    "RateLimitedError",
    "ReauthorizationRequired",
    "StoreKeyError",
    "SystemStoppedError",
    "TokenError",
    "UpstreamError",
    "detached",
    "mask_secret",
    "mask_token",
    "plain_traceback",
    "redact",
]

E = TypeVar("E", bound=BaseException)


class TokenError(Exception):
    """Base class of every error this library raises for a token request."""


# The SDKs' own codes for a keyless app's client assertion, raised before anything is sent
# (docs/feishu-protocol.md, "Keyless apps"): no app token, an unusable assertion, a provider
# that raised.
_ASSERTION_CODES = frozenset({7100, 7101, 7102})


class AuthError(TokenError):
    """Feishu rejected the app's credentials; retrying will not help until they are fixed."""

    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = msg
        if code in _ASSERTION_CODES:
            text = (
                f"the app's client assertion could not be used (code {code}: {msg}); check the "
                "provider given as AppConfig(client_assertion=...). Not retried."
            )
        else:
            text = (
                f"Feishu rejected the app credentials (code {code}: {msg}); check app_id, "
                "app_secret (a keyless app: its client assertion and registered public key) "
                "and that the app is published. Not retried."
            )
        super().__init__(text)

    def __reduce__(self) -> tuple[type[AuthError], tuple[int, str]]:
        return (type(self), (self.code, self.msg))


class UpstreamError(TokenError):
    """The token endpoint kept failing transiently (network, timeout, 5xx, non-JSON, rate limit)."""

    def __init__(
        self,
        code: int | None,
        status: int | None,
        attempts: int,
        *,
        detail: str = "",
    ) -> None:
        self.code = code
        self.status = status
        self.attempts = attempts
        self.detail = detail
        parts = (_said(code), f"HTTP {status}" if status else "")
        what = ", ".join(p for p in parts if p) or "no response"
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"Feishu token endpoint failed after {attempts} attempt(s) ({what}){suffix}; "
            "the next get will try again."
        )

    def after_attempts(self, attempts: int) -> UpstreamError:
        """The same failure, reported as the outcome of ``attempts`` attempts."""
        return UpstreamError(self.code, self.status, attempts, detail=self.detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (type(self), (self.code, self.status, self.attempts), vars(self)))


def _said(code: int | None) -> str:
    """What the answer's ``code`` says; code 0 is Feishu's "ok" (a success body the library could
    not use: no token, an unusable lifetime), which "failed (code 0)" would misstate."""
    if code is None:
        return ""
    return "answered ok" if code == 0 else f"code {code}"


class RateLimitedError(UpstreamError):
    """Feishu answered 99991400 / HTTP 429; ``retry_after`` is its x-ogw-ratelimit-reset."""

    def __init__(
        self,
        code: int | None,
        status: int | None,
        attempts: int,
        *,
        retry_after: float | None,
        detail: str = "",
    ) -> None:
        self.retry_after = retry_after
        hint = f"retry after {retry_after:g}s" if retry_after is not None else "rate limited"
        super().__init__(code, status, attempts, detail=detail or hint)

    def after_attempts(self, attempts: int) -> RateLimitedError:
        return RateLimitedError(
            self.code, self.status, attempts, retry_after=self.retry_after, detail=self.detail
        )


def _rebuilt(cls: type[E], args: tuple[Any, ...], state: dict[str, Any]) -> E:
    """An UpstreamError (or subclass) made again from its attributes, as pickle and copy do:
    its message is built from the keyword-only ``detail`` (and ``retry_after``)."""
    keywords = {name: state[name] for name in ("detail", "retry_after") if name in state}
    error = cls(*args, **keywords)
    vars(error).update(state)
    return error


class AppTicketError(TokenError):
    """A marketplace app has no valid app_ticket (none received yet, or Feishu said 10012)."""

    def __init__(self, app_id: str, reason: str) -> None:
        self.app_id = app_id
        self.reason = reason
        super().__init__(
            f"no valid app_ticket for app {app_id}: {reason}; make sure the app_ticket event "
            "reaches set_app_ticket()."
        )

    def __reduce__(self) -> tuple[type[AppTicketError], tuple[str, str]]:
        return (type(self), (self.app_id, self.reason))


# What ReauthorizationRequired.reason may be, with what the user must do about it.
REAUTHORIZATION_REASONS = {
    "revoked": "the refresh token was revoked or already used, and no newer grant is stored",
    "expired": "the refresh token expired (7 days unused, or 365 days since the login)",
    "invalid": "Feishu does not know the refresh token",
    "wrong_app": "the refresh token belongs to another app (check app_id)",
    "refresh_disabled": (
        'the app has not enabled refreshing user tokens (switch on "refresh user_access_token" '
        "in the console's security settings)"
    ),
    "no_refresh_token": (
        "the grant has no refresh token (ask for the offline_access scope, and enable it in the "
        "console)"
    ),
    "unknown_user": "no grant is stored for this user",
    "interrupted": (
        "a process died while rotating this grant, after sending its refresh token and before "
        "storing the answer"
    ),
}


class ReauthorizationRequired(TokenError):
    """The user must log in again (send them through ``authorize_url``): their grant ended.

    ``reason`` says why: ``revoked``, ``expired``, ``invalid``, ``wrong_app``,
    ``refresh_disabled``, ``no_refresh_token``, ``unknown_user`` or ``interrupted`` (the message
    explains each); ``code`` is Feishu's code, if Feishu gave one; ``app_id`` and ``user`` (the
    open_id) say whose grant it was.
    """

    def __init__(self, reason: str, *, app_id: str, user: str, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        self.app_id = app_id
        self.user = user
        why = REAUTHORIZATION_REASONS.get(reason, reason)
        said = f" (code {code})" if code is not None else ""
        super().__init__(
            f"user {user} of app {app_id} must authorize again: {why}{said}; send them "
            "through authorize_url()."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reauthorization, (self.reason, self.app_id, self.user, self.code))


def _reauthorization(
    reason: str, app_id: str, user: str, code: int | None
) -> ReauthorizationRequired:
    return ReauthorizationRequired(reason, app_id=app_id, user=user, code=code)


class AuthorizationCodeError(TokenError):
    """Exchanging an authorization code failed: the login did not complete; the user tries
    again. ``code`` is Feishu's code (20003 not found, 20065 already used, 20004 expired, ...)
    or None when no answer came."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code = code
        self.msg = msg
        said = f"code {code}: " if code is not None else ""
        super().__init__(
            f"the authorization code could not be exchanged ({said}{msg}); codes work once, "
            "within 5 minutes: send the user through authorize_url() again."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.msg))


class StoreKeyError(TokenError):
    """A user grant in a store could not be decrypted with the store's key(s): the key is wrong
    or was removed from the list. Nothing was changed in the store; give the store the key
    the grant was written with (as a later item of ``key=[new, old]``)."""

    def __init__(self, store: str) -> None:
        self.store = store
        super().__init__(
            f"{store}: a stored user grant does not decrypt with the key(s) given; nothing was "
            "changed. Pass the key it was written with too (key=[new_key, old_key])."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.store,))


class SystemStoppedError(TokenError):
    """The TokenSystem was stopped before this request could be answered."""

    def __init__(self, msg: str = "the TokenSystem was stopped; start a new one") -> None:
        super().__init__(msg)


_VISIBLE = 2


def mask_token(token: str | None) -> str:
    """``t-abcdef…789f`` -> ``t-ab…9f``: enough to correlate log lines, never enough to use."""
    if not token:
        return "<none>"
    prefix, sep, body = token.partition("-")
    if not sep or len(prefix) > 3:
        prefix, sep, body = "", "", token
    if len(body) <= 2 * _VISIBLE:
        return f"{prefix}{sep}…"
    return f"{prefix}{sep}{body[:_VISIBLE]}…{body[-_VISIBLE:]}"


def mask_secret(secret: str | None) -> str:
    """Secrets never show, not even in part."""
    return "<unset>" if not secret else "***"


# Token-shaped: a one-letter prefix and a dash (Feishu's t-, a-, u-; ur- for refresh tokens)
# followed by a long run of token characters, e.g. ``t-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB``.
_TOKEN_SHAPED = re.compile(r"(?<![\w-])(?:[a-z]|ur)-\w[\w-]{15,}")
# The value after a credential field's name, as JSON (``"app_secret": "…"``) or a form
# (``app_secret=…``) would spell it: also caught when the value is cut short or not this app's.
_SECRET_FIELD = re.compile(
    r"""((?:app_secret|app_ticket|app_access_token|tenant_access_token|client_secret|refresh_token|access_token|code_verifier|client_assertion)\\?["']?\s*[:=]\s*\\?["']?)"""
    r"""[^\s"'\\&,;}]+"""
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` from upstream (an error ``msg``, a header) made safe for messages and logs.

    A proxy that echoes the request back puts the app_secret (or the app_ticket, or the app token)
    into the answer; so every occurrence of the request's ``secrets`` (also JSON- and URL-escaped)
    becomes ``***``, every value of a credential field (``"app_secret": …``) too, and anything
    token-shaped is masked as :func:`mask_token` masks tokens.
    """
    variants = {
        form
        for secret in secrets
        if secret
        for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret))
    }
    # Longest first: a secret that contains another is replaced whole.
    for form in sorted(variants, key=len, reverse=True):
        text = text.replace(form, mask_secret(form))
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + mask_secret(m.group(0)), text)
    return _TOKEN_SHAPED.sub(lambda m: mask_token(m.group(0)), text)


def detached(error: E) -> E:
    """``error`` as it may be handed to a caller: no traceback and no chained exceptions.

    The frames of the thread that raised it hold what that thread was working with (a worker's
    hold the request body with the app_secret, the app_ticket or the app token; the actor's
    hold cached tokens), and loguru's ``logger.exception`` with its defaults, like Sentry,
    prints every frame's variables, chained exceptions' frames too. So each caller gets a copy
    of its own: one caller raising it sets that copy's ``__traceback__`` to *its* frames, which
    no other caller of the same failure then sees. An exception that cannot be copied faithfully
    (same type, same ``args``) is stripped in place instead.
    """
    try:
        fresh = copy.copy(error)
    except Exception:  # its class cannot be made again from its args
        fresh = error
    if type(fresh) is not type(error) or fresh.args != error.args:
        fresh = error
    fresh.__traceback__ = None
    fresh.__context__ = None
    fresh.__cause__ = None
    return fresh


def plain_traceback(error: BaseException) -> str:
    """The traceback without frame locals: loguru's ``logger.exception`` with ``diagnose=True``
    (its default sink) prints every local variable, tokens included."""
    return "".join(traceback.format_exception(error)).rstrip()
