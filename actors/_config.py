"""Configuration: apps, token kinds, cache keys and the one timing policy."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import os
import random
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import urllib3.exceptions
import urllib3.util

from actors._errors import mask_secret

__all__ = [
    "FEISHU",
    "LARK",
    "AppConfig",
    "AppType",
    "RefreshPolicy",
    "TokenKey",
    "TokenKind",
    "check_user",
    "resolve_app",
    "resolve_key",
]

FEISHU = "https://open.feishu.cn"
LARK = "https://open.larksuite.com"

# Feishu hands out the same token while 30 minutes or more remain (docs/feishu-protocol.md,
# lifetime rule), so a prewarm earlier than this can never yield a new token.
FEISHU_REFRESH_WINDOW = 1800.0


class AppType(enum.StrEnum):
    SELF_BUILT = "self_built"
    MARKETPLACE = "marketplace"


class TokenKind(enum.StrEnum):
    TENANT = "tenant"
    APP = "app"
    USER = "user"  # a user_access_token: keyed by the user's open_id
    JSAPI_TICKET = "jsapi_ticket"  # the JSSDK's ticket, per tenant (made with its tenant token)

    # Enum hashes the member's *name* in Python code; a StrEnum equals its value, so hashing the
    # value (in C) is both consistent with ``TokenKind.TENANT == "tenant"`` and cheaper on the
    # hot path, where every get hashes a key holding a kind.
    __hash__ = str.__hash__


class TokenKey(NamedTuple):
    """What a cached token is keyed by: never shared across domains, apps, kinds or tenants."""

    base_url: str
    app_id: str
    kind: TokenKind
    tenant_key: str | None = None
    user: str | None = None  # the open_id, for TokenKind.USER only

    def describe(self) -> str:
        tenant = f"/{self.tenant_key}" if self.tenant_key else ""
        user = f"/{self.user}" if self.user else ""
        return f"{self.app_id}:{self.kind.value}{tenant}{user}"


@dataclasses.dataclass(frozen=True, slots=True)
class AppConfig:
    """One Feishu/Lark app. Validated at construction; the secret is masked in ``repr``.

    An app authenticates with exactly one of ``app_secret`` and ``client_assertion``. A
    *keyless* self-built app holds no secret: ``client_assertion`` is a provider
    ``provider(aud) -> str`` returning a fresh signed JWT for the audience ``aud`` (the accounts
    host, e.g. ``accounts.feishu.cn``; ``host:port`` for another base_url). The library calls it
    on a fetch worker once per token request and never keeps what it returns; its tenant and
    user tokens come from the v3 OAuth token endpoint (docs/feishu-protocol.md, "Keyless apps").
    """

    app_id: str
    app_secret: str | None = dataclasses.field(default=None, repr=False)
    app_type: AppType = dataclasses.field(default=AppType.SELF_BUILT, kw_only=True)
    base_url: str = dataclasses.field(default=FEISHU, kw_only=True)
    # Where user tokens are redeemed: "v3" (the accounts host's /oauth/v3/token, what the SDKs
    # use) or "v2" (base_url's /open-apis/authen/v2/oauth/token, e.g. behind a proxy that
    # forwards only base_url); docs/feishu-protocol.md, "User access tokens".
    user_token_endpoint: str = dataclasses.field(default="v3", kw_only=True)
    # Left out of the hash: a provider need not be hashable (a callable object with __eq__).
    client_assertion: Callable[[str], str] | None = dataclasses.field(
        default=None, kw_only=True, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, str) or not self.app_id.strip():
            msg = "AppConfig.app_id must be a non-empty string"
            raise ValueError(msg)
        self._check_credentials()
        try:
            app_type = AppType(self.app_type)
        except ValueError:
            msg = f"AppConfig.app_type must be an AppType, got {self.app_type!r}"
            raise ValueError(msg) from None
        object.__setattr__(self, "app_type", app_type)
        object.__setattr__(self, "base_url", _checked_base_url(self.base_url))
        if self.user_token_endpoint not in ("v3", "v2"):
            endpoint = self.user_token_endpoint
            msg = f"AppConfig.user_token_endpoint must be 'v3' or 'v2', got {endpoint!r}"
            raise ValueError(msg)
        if self.keyless:
            self._check_keyless()

    def _check_credentials(self) -> None:
        if self.client_assertion is None:
            if not isinstance(self.app_secret, str) or not self.app_secret.strip():
                msg = (
                    f"AppConfig.app_secret must be a non-empty string (app_id={self.app_id}); "
                    "a keyless app gives client_assertion=provider instead"
                )
                raise ValueError(msg)
            return
        if self.app_secret is not None:
            msg = f"AppConfig takes app_secret or client_assertion, not both (app_id={self.app_id})"
            raise ValueError(msg)
        if not callable(self.client_assertion):
            what = type(self.client_assertion).__name__  # never the value: it may be a key
            msg = (
                "AppConfig.client_assertion must be a callable provider(aud) -> str, "
                f"got {what} (app_id={self.app_id})"
            )
            raise ValueError(msg)

    def _check_keyless(self) -> None:
        # Client assertions stand in for a self-built app's secret only: a marketplace app's
        # tokens need its app_ticket and secret (docs/feishu-protocol.md, "Keyless apps").
        if self.app_type is AppType.MARKETPLACE:
            msg = (
                f"AppConfig: a marketplace app cannot be keyless (app_id={self.app_id}); "
                "client_assertion is for self-built apps: give app_secret"
            )
            raise ValueError(msg)
        if self.user_token_endpoint != "v3":
            msg = (
                "AppConfig.user_token_endpoint must be 'v3' for a keyless app: client "
                f"assertions are sent to the accounts host (app_id={self.app_id})"
            )
            raise ValueError(msg)

    @property
    def keyless(self) -> bool:
        """Whether the app authenticates with a client assertion rather than a secret."""
        return self.client_assertion is not None

    @classmethod
    def from_env(
        cls, prefix: str = "FEISHU_", *, environ: Mapping[str, str] | None = None
    ) -> AppConfig:
        """The app in the environment: ``{prefix}APP_ID``, ``{prefix}APP_SECRET``, optional
        ``{prefix}APP_TYPE`` (``self_built`` or ``marketplace``) and ``{prefix}BASE_URL``.

        A missing or malformed variable raises ``ValueError`` naming it (never its value when
        it is the secret). Apps with a secret only: a keyless app's provider is code, not a
        variable, so it is built with ``AppConfig(app_id, client_assertion=provider)``.
        """
        env = os.environ if environ is None else environ

        def read(name: str, *, required: bool) -> str | None:
            value = env.get(prefix + name, "").strip()
            if not value and required:
                msg = f"{prefix}{name} is not set (the app's {name.lower().replace('_', ' ')})"
                raise ValueError(msg)
            return value or None

        app_id, secret = read("APP_ID", required=True), read("APP_SECRET", required=True)
        app_type = read("APP_TYPE", required=False) or AppType.SELF_BUILT.value
        try:
            kind = AppType(app_type.lower().replace("-", "_"))
        except ValueError:
            msg = f"{prefix}APP_TYPE must be self_built or marketplace, got {app_type!r}"
            raise ValueError(msg) from None
        base_url = read("BASE_URL", required=False) or FEISHU
        try:
            return cls(app_id or "", secret or "", app_type=kind, base_url=base_url)
        except ValueError as exc:
            msg = f"{prefix}BASE_URL: {exc}" if "base_url" in str(exc) else str(exc)
            raise ValueError(msg) from None

    def key(
        self, kind: TokenKind, tenant_key: str | None = None, user: str | None = None
    ) -> TokenKey:
        return TokenKey(self.base_url, self.app_id, kind, tenant_key, user)

    def __repr__(self) -> str:
        # The provider is never repr'd: a closure's or a partial's repr may show its key.
        credential = (
            "client_assertion=<provider>"
            if self.keyless
            else f"app_secret={mask_secret(self.app_secret)!r}"
        )
        return (
            f"AppConfig(app_id={self.app_id!r}, {credential}, "
            f"app_type={self.app_type.value!r}, base_url={self.base_url!r}"
            + (
                f", user_token_endpoint={self.user_token_endpoint!r})"
                if self.user_token_endpoint != "v3"
                else ")"
            )
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RefreshPolicy:
    """Every timing knob of the system, in seconds.

    A token is served only while ``now < expires_at - safety_margin``. Prewarm starts at
    ``expires_at - prewarm_lead * (1 + u)`` with ``u`` uniform in ``[-jitter, +jitter]``.
    Transient failures retry with exponential backoff and full jitter
    (``uniform(0, min(retry_cap, retry_base * 2**attempt))``), at most ``max_attempts`` requests.
    """

    safety_margin: float = 180.0
    prewarm_lead: float = 600.0
    jitter: float = 0.1
    retry_base: float = 0.5
    retry_cap: float = 30.0
    max_attempts: int = 5
    request_timeout: tuple[float, float] = (3.05, 10.0)
    max_concurrent_fetches: int = 8
    ticket_wait: float = 60.0
    idle_ttl: float = 4 * 7200.0
    # A stored user grant whose refresh token expires within this is rotated although nobody
    # reads it, so an idle user is not logged out when the refresh token's ~7 days run out.
    user_keepalive_lead: float = 86400.0
    # GrantExpiring is published this long before a grant reaches Feishu's 365-day limit.
    user_reauthorize_notice: float = 7 * 86400.0
    report_interval: float | None = None  # log the performance report this often (INFO)
    seed: int | None = None

    def __post_init__(self) -> None:
        # NaN passes every comparison test the wrong way (nan < 0 is False) and infinity makes
        # timers that never fire or overflow: each number must be finite before any range check.
        for name in (
            "safety_margin",
            "prewarm_lead",
            "jitter",
            "retry_base",
            "retry_cap",
            "ticket_wait",
            "idle_ttl",
            "user_keepalive_lead",
            "user_reauthorize_notice",
        ):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                msg = f"RefreshPolicy.{name} must be a finite number >= 0, got {value!r}"
                raise ValueError(msg)
        if self.report_interval is not None and not (
            _finite(self.report_interval) and self.report_interval > 0
        ):
            msg = f"RefreshPolicy.report_interval must be > 0 or None, got {self.report_interval!r}"
            raise ValueError(msg)
        if not 0 < self.prewarm_lead < FEISHU_REFRESH_WINDOW:
            msg = (
                f"RefreshPolicy.prewarm_lead must be > 0 and < {FEISHU_REFRESH_WINDOW:g} (Feishu "
                f"only issues a new token in the last 30 minutes), got {self.prewarm_lead!r}"
            )
            raise ValueError(msg)
        if self.prewarm_lead <= self.safety_margin:
            msg = "RefreshPolicy.prewarm_lead must be greater than safety_margin"
            raise ValueError(msg)
        if not 0 <= self.jitter < 1:
            msg = f"RefreshPolicy.jitter must be in [0, 1), got {self.jitter!r}"
            raise ValueError(msg)
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            msg = f"RefreshPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}"
            raise ValueError(msg)
        if not isinstance(self.max_concurrent_fetches, int) or self.max_concurrent_fetches < 1:
            msg = (
                "RefreshPolicy.max_concurrent_fetches must be an int >= 1, "
                f"got {self.max_concurrent_fetches!r}"
            )
            raise ValueError(msg)
        timeout = self.request_timeout
        if (
            not isinstance(timeout, tuple)
            or len(timeout) != 2
            or not all(_finite(t) and t > 0 for t in timeout)
        ):
            msg = f"RefreshPolicy.request_timeout must be (connect, read) > 0, got {timeout!r}"
            raise ValueError(msg)

    def prewarm_due(
        self, expires_at: float, *, serve_until: float, now: float, rng: random.Random
    ) -> float:
        """When to refresh a token that expires at ``expires_at``, jittered.

        Never earlier than halfway from now to ``serve_until`` (the last moment the token is
        served, from the cache's one servability rule): a server that keeps handing out the
        same or short-lived tokens then costs a logarithmic number of refreshes, never a loop.
        """
        due = expires_at - self.prewarm_lead * (1 + rng.uniform(-1.0, 1.0) * self.jitter)
        return max(due, now + (serve_until - now) / 2)

    def keepalive_due(self, refresh_until: float, now: float, rng: random.Random) -> float:
        """When to rotate a user's grant whose refresh token expires at ``refresh_until``
        although nobody reads it: ``user_keepalive_lead`` before, jittered, and never earlier
        than halfway from now (a server issuing short-lived refresh tokens costs a logarithmic
        number of rotations, never a loop)."""
        lead = self.user_keepalive_lead * (1 + rng.uniform(-1.0, 1.0) * self.jitter)
        return max(refresh_until - lead, now + (refresh_until - now) / 2)

    def keepalive_now(self, refresh_until: float, now: float) -> bool:
        """Whether an idle user's grant is due for its keep-alive rotation at ``now``."""
        return refresh_until - now <= self.user_keepalive_lead * (1 + self.jitter)

    def backoff(
        self, attempt: int, rng: random.Random, *, retry_after: float | None = None
    ) -> float:
        """Delay before retry number ``attempt`` (1-based): full jitter, honouring retry_after."""
        delay = rng.uniform(0, min(self.retry_cap, self.retry_base * 2 ** (attempt - 1)))
        return delay if retry_after is None else max(delay, retry_after)


# What a base URL may be spelled with: letters, digits, ``-._~``, ``:/[]`` and %-escapes. No
# userinfo (``@``), no backslash, no query or fragment, no whitespace or control character:
# each is a place where Python's ``urllib.parse`` and urllib3 (which sends requests' requests)
# read a URL differently.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/\[\]%-]")
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REFUSED = {
    "@": "user info (user:password@) is not allowed",
    "\\": "backslashes are not allowed",
    "?": "a base URL has no query",
    "#": "a base URL has no fragment",
}


def _checked_base_url(url: object) -> str:
    """``url`` without its trailing slash, if it is a base URL the app's requests may go to.

    The app secret goes to the host this names: so it is the host that Python's URL parser
    (these checks) *and* urllib3 (which requests sends with) both read, over https unless it is
    loopback. A URL they read differently is refused, never guessed at; the URL is not repeated
    in an error whose reason may be a credential in it.
    """
    if not isinstance(url, str):
        msg = f"AppConfig.base_url must be an http(s) URL string, got {type(url).__name__}"
        raise ValueError(msg)
    for char, reason in _REFUSED.items():
        if char in url:
            raise ValueError(f"AppConfig.base_url: {reason}")
    for char in url:
        if not _URL_CHARS.fullmatch(char):
            raise ValueError(f"AppConfig.base_url: character {char!r} is not allowed")
    if _BAD_ESCAPE.search(url):
        raise ValueError("AppConfig.base_url: a % must start a %XX escape")
    try:
        ours = urlsplit(url)
        port = ours.port  # ValueError when out of range or not a number
        theirs = urllib3.util.parse_url(url)
    except (ValueError, urllib3.exceptions.LocationParseError):
        msg = f"AppConfig.base_url must be an http(s) URL with a valid host and port, got {url!r}"
        raise ValueError(msg) from None
    scheme = ours.scheme.lower()
    host = (ours.netloc.rpartition(":")[0] if port is not None else ours.netloc).lower()
    if scheme not in ("http", "https") or not _HOST.fullmatch(host) or port == 0:
        msg = f"AppConfig.base_url must be an http(s) URL with a valid host and port, got {url!r}"
        raise ValueError(msg)
    read_by_urllib3 = (theirs.scheme, (theirs.host or "").lower(), theirs.port, theirs.path or "")
    if read_by_urllib3 != (scheme, host, port, ours.path):
        msg = f"AppConfig.base_url is read differently by urllib and urllib3, got {url!r}"
        raise ValueError(msg)
    if scheme == "http" and not _loopback(host.strip("[]")):
        # The token requests carry the app secret: never in clear text beyond this machine.
        msg = (
            "AppConfig.base_url must be https:// (plain http:// only on loopback, e.g. "
            f"http://127.0.0.1:8080), got {url!r}"
        )
        raise ValueError(msg)
    return url.rstrip("/")


# Unix seconds from which a ticket's made_at is surely milliseconds (the year 5138).
_MADE_AT_MAX = 1e11


def check_made_at(made_at: object) -> float | None:
    """An app_ticket event's creation time as given to ``set_app_ticket`` / ``put_ticket``:
    None, or Unix seconds (a finite number >= 0, not milliseconds); ValueError otherwise."""
    if made_at is None:
        return None
    if (
        not isinstance(made_at, int | float)
        or isinstance(made_at, bool)
        or not 0 <= made_at < _MADE_AT_MAX  # NaN and infinities too are outside
    ):
        msg = f"made_at must be Unix seconds (a number >= 0, not ms) or None, got {made_at!r}"
        raise ValueError(msg)
    return float(made_at)


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_USER_MAX = 256  # an open_id is ~35 characters; nothing this long is one


def resolve_key(
    apps: Mapping[str, AppConfig],
    kind: Any,
    tenant_key: str | None,
    app_id: str | None,
    user: str | None = None,
) -> TokenKey:
    """Validate a get's arguments against the served apps; ValueError says what is wrong."""
    try:
        kind = TokenKind(kind)
    except ValueError:
        kinds = ", ".join(f"TokenKind.{k.name}" for k in TokenKind)
        msg = f"kind must be one of {kinds}, got {kind!r}"
        raise ValueError(msg) from None
    app = resolve_app(apps, app_id)
    if tenant_key is not None and not isinstance(tenant_key, str):
        msg = f"tenant_key must be a string or None, got {type(tenant_key).__name__}"
        raise ValueError(msg)
    if kind is TokenKind.USER:
        if tenant_key is not None:
            msg = "tenant_key is not accepted for a user token; name the user with user=open_id"
            raise ValueError(msg)
        return app.key(kind, None, check_user(user))
    if user is not None:
        msg = f"user= is only accepted for TokenKind.USER, not for {kind.value} tokens"
        raise ValueError(msg)
    if kind is TokenKind.APP and app.keyless:
        msg = f"app {app.app_id} is keyless (a client assertion): it has no app_access_token"
        raise ValueError(msg)
    if kind is TokenKind.APP or app.app_type is AppType.SELF_BUILT:
        if tenant_key is not None:
            what = "an app token" if kind is TokenKind.APP else f"a self-built app's {kind.value}"
            msg = f"tenant_key is not accepted for {what} (app {app.app_id}); leave it None"
            raise ValueError(msg)
    elif not isinstance(tenant_key, str) or not tenant_key:
        msg = f"tenant_key is required for marketplace app {app.app_id}'s {kind.value}"
        raise ValueError(msg)
    return app.key(kind, tenant_key)


def resolve_app(apps: Mapping[str, AppConfig], app_id: str | None) -> AppConfig:
    """The app ``app_id`` names (None: the only one served); ValueError otherwise."""
    if app_id is not None and not isinstance(app_id, str):
        msg = f"app_id must be a string or None, got {type(app_id).__name__}"
        raise ValueError(msg)
    if app_id is None:
        if len(apps) != 1:
            msg = f"app_id is required: this system serves {len(apps)} apps ({', '.join(apps)})"
            raise ValueError(msg)
        return next(iter(apps.values()))
    if app_id in apps:
        return apps[app_id]
    msg = f"unknown app_id {app_id!r}; this system serves: {', '.join(apps)}"
    raise ValueError(msg)


def check_user(user: object) -> str:
    """``user`` if it can be a user's open_id: a non-empty printable string without spaces."""
    if not isinstance(user, str) or not user:
        msg = "user= (the user's open_id) is required for TokenKind.USER"
        raise ValueError(msg)
    if len(user) > _USER_MAX or not user.isprintable() or any(c.isspace() for c in user):
        msg = "user= must be an open_id: printable, without spaces, at most 256 characters"
        raise ValueError(msg)
    return user
