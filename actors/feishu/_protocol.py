"""The Feishu/Lark auth v3 wire protocol in one table (``docs/feishu-protocol.md``).

Paths, request fields, response fields, and what each response code means for a token manager.
The client (``_client``), the outcome decision (``actors._refresh``), the HTTP integrations and
the benchmarks read it from here: a new code or endpoint is one row. The user-token (OAuth) side has
hosts, paths and a code table of its own (:data:`USER_TOKEN_CODES`, read by ``_oauth``). The
embedded fake server (``actors.testing``) reads the routes and fields but writes its codes out
itself, so that its answers check this table rather than echo it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType

from actors._config import FEISHU, LARK, AppType, TokenKind

__all__ = [
    "ACCOUNTS_HOSTS",
    "ASSERTION_EMPTY",
    "ASSERTION_FAILED",
    "ASSERTION_NO_APP_TOKEN",
    "AUTHORIZE_PATH",
    "AUTH_PREFIX",
    "CLIENT_ASSERTION_TYPE",
    "CODES",
    "CODE_FIELD",
    "CONTENT_TYPE",
    "ENDPOINTS",
    "EXPIRE_FIELD",
    "JSAPI_EXPIRE_FIELD",
    "JSAPI_TICKET_FIELD",
    "JSAPI_TICKET_PATH",
    "MAX_EXPIRE",
    "MAX_REFRESH_EXPIRE",
    "MAX_RETRY_AFTER",
    "MSG_FIELD",
    "OAUTH_JWT_BEARER_GRANT",
    "OAUTH_V2_PATH",
    "OAUTH_V3_PATH",
    "RATE_LIMIT_RESET_HEADER",
    "REFRESH_EXPIRE_DEFAULT",
    "RESEND",
    "TOKEN_INVALID_CODES",
    "USER_INFO_PATH",
    "USER_TOKEN_CODES",
    "CodeRule",
    "Endpoint",
    "Rule",
    "UserCodeRule",
    "UserRule",
    "endpoint_for",
    "rule_for",
    "usable_expire",
    "user_rule_for",
]


AUTH_PREFIX = "/open-apis/auth/v3/"
CONTENT_TYPE = "application/json; charset=utf-8"
RATE_LIMIT_RESET_HEADER = "x-ogw-ratelimit-reset"  # seconds until the rate limit resets

# Response fields: flat JSON, no "data" wrapper.
CODE_FIELD = "code"
MSG_FIELD = "msg"
EXPIRE_FIELD = "expire"  # the token's *remaining* lifetime in seconds


# Tokens live at most two hours; an answer claiming more than a day is nonsense (or an attack:
# a huge or infinite expire once overflowed the timer thread), never a token to cache.
MAX_EXPIRE = 86400.0


def usable_expire(value: object, *, limit: float = MAX_EXPIRE) -> bool:
    """Whether ``value`` is a lifetime a token may have: a finite number in (0, ``limit``]
    (:data:`MAX_EXPIRE`; a refresh token's: :data:`MAX_REFRESH_EXPIRE`)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= limit
    )


# The longest a rate limit's reset header is honoured: a gateway asking for hours (or sending
# nonsense) must not park a key's callers, or overflow a timer, for longer than this.
MAX_RETRY_AFTER = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One auth endpoint: all are POST with a JSON body and no auth header."""

    path: str
    app_type: AppType
    kind: TokenKind | None  # None: app_ticket/resend, which answers no token
    request_fields: tuple[str, ...]

    @property
    def token_field(self) -> str | None:
        """The response field holding the token (``app_access_token`` / ``tenant_access_token``)."""
        return None if self.kind is None else f"{self.kind.value}_access_token"


_SECRET_FIELDS = ("app_id", "app_secret")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        AUTH_PREFIX + "app_access_token/internal", AppType.SELF_BUILT, TokenKind.APP, _SECRET_FIELDS
    ),
    Endpoint(
        AUTH_PREFIX + "tenant_access_token/internal",
        AppType.SELF_BUILT,
        TokenKind.TENANT,
        _SECRET_FIELDS,
    ),
    Endpoint(
        AUTH_PREFIX + "app_access_token",
        AppType.MARKETPLACE,
        TokenKind.APP,
        (*_SECRET_FIELDS, "app_ticket"),
    ),
    # The marketplace tenant token is the second step: it carries the app token, not the secret.
    Endpoint(
        AUTH_PREFIX + "tenant_access_token",
        AppType.MARKETPLACE,
        TokenKind.TENANT,
        ("app_access_token", "tenant_key"),
    ),
)
# The JSSDK's ticket: POST with the tenant token as Bearer, an empty JSON body; the answer is
# {code, msg, data: {ticket, expire_in}} (docs/feishu-protocol.md, "jsapi_ticket").
JSAPI_TICKET_PATH = "/open-apis/jssdk/ticket/get"
JSAPI_TICKET_FIELD = "ticket"
JSAPI_EXPIRE_FIELD = "expire_in"

# Makes Feishu push the app_ticket event again; the ticket never comes back in this answer.
RESEND = Endpoint(AUTH_PREFIX + "app_ticket/resend", AppType.MARKETPLACE, None, _SECRET_FIELDS)

_BY_TYPE_AND_KIND = {(e.app_type, e.kind): e for e in ENDPOINTS}


def endpoint_for(app_type: AppType, kind: TokenKind) -> Endpoint:
    return _BY_TYPE_AND_KIND[(app_type, kind)]


class Rule(enum.StrEnum):
    """What a token manager does with a response code."""

    OK = "ok"  # cache the token
    PERMANENT = "permanent"  # AuthError: fail every waiter at once, no retry
    TICKET_INVALID = "ticket_invalid"  # AppTicketError: drop the ticket, resend, wait for a new one
    RATE_LIMITED = "rate_limited"  # RateLimitedError: back off at least x-ogw-ratelimit-reset
    # On the marketplace tenant endpoint: the app token it carried is stale, so drop the cached
    # app token and retry. On business APIs: invalidate exactly the token sent, refetch once.
    TOKEN_INVALID = "token_invalid"
    CALLER_BUG = "caller_bug"  # business APIs only: no token sent; refetching cannot help
    SCOPE = "scope"  # business APIs only: a permission problem, not a token problem
    TRANSIENT = "transient"  # UpstreamError: retry with backoff


@dataclasses.dataclass(frozen=True, slots=True)
class CodeRule:
    code: int
    rule: Rule
    meaning: str


CODES: Mapping[int, CodeRule] = MappingProxyType(
    {
        row.code: row
        for row in (
            CodeRule(0, Rule.OK, "ok"),
            CodeRule(10003, Rule.PERMANENT, "invalid param: wrong app_id or unpublished app"),
            CodeRule(10014, Rule.PERMANENT, "app secret invalid"),
            CodeRule(99991543, Rule.PERMANENT, "app_id or app_secret incorrect"),
            CodeRule(10012, Rule.TICKET_INVALID, "app_ticket invalid"),
            CodeRule(99991400, Rule.RATE_LIMITED, "frequency limit"),
            CodeRule(99991663, Rule.TOKEN_INVALID, "tenant access token invalid"),
            CodeRule(99991664, Rule.TOKEN_INVALID, "app access token invalid"),
            CodeRule(99991671, Rule.TOKEN_INVALID, "access token invalid (format)"),
            CodeRule(99991661, Rule.CALLER_BUG, "access token missing"),
            CodeRule(99991672, Rule.SCOPE, "missing scope"),
            CodeRule(99991679, Rule.SCOPE, "user did not grant the scope"),
        )
    }
)

TOKEN_INVALID_CODES = frozenset(c for c, row in CODES.items() if row.rule is Rule.TOKEN_INVALID)


def rule_for(code: int | None, status: int | None = None) -> Rule:
    """The rule for a response. HTTP 429 is rate limiting whatever the code; unknown codes are
    transient: a retry costs little, a wrongly permanent verdict fails every waiter at once."""
    row = CODES.get(code) if code is not None else None
    if row is not None and row.rule in _BEFORE_STATUS:
        return row.rule
    if status == 429:
        return Rule.RATE_LIMITED
    return row.rule if row is not None else Rule.TRANSIENT


# Codes whose meaning wins over an HTTP 429 status.
_BEFORE_STATUS = frozenset({Rule.OK, Rule.PERMANENT, Rule.TICKET_INVALID, Rule.RATE_LIMITED})


# --- user access tokens (OAuth 2.0; docs/feishu-protocol.md, "User access tokens") ----------------

# The authorize page and the v3 token endpoint live on the accounts host of the app's domain; the
# v2 token endpoint and user_info on the Open Platform host (the app's base_url). A base_url of
# neither domain (a proxy, a test server) serves both.
ACCOUNTS_HOSTS: Mapping[str, str] = MappingProxyType(
    {FEISHU: "https://accounts.feishu.cn", LARK: "https://accounts.larksuite.com"}
)
AUTHORIZE_PATH = "/open-apis/authen/v1/authorize"  # GET, in the user's browser
OAUTH_V3_PATH = "/oauth/v3/token"  # POST, on the accounts host
OAUTH_V2_PATH = "/open-apis/authen/v2/oauth/token"  # POST, on the Open Platform host
USER_INFO_PATH = "/open-apis/authen/v1/user_info"  # GET, Authorization: Bearer <user token>

# Keyless apps (RFC 7523; docs/feishu-protocol.md, "Keyless apps"): the client assertion stands in
# for the secret on the v3 token endpoint, and a self-built app's tenant token is the jwt-bearer
# grant there, answering {access_token, expires_in}.
OAUTH_JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Codes of the SDKs themselves (oapi-sdk-go, lark-oapi 1.7), never Feishu's: the request was
# never sent.
ASSERTION_NO_APP_TOKEN = 7100  # a keyless app has no app_access_token
ASSERTION_EMPTY = 7101  # the provider returned no assertion (None, "", not a string)
ASSERTION_FAILED = 7102  # the provider raised

# A refresh token lives about 7 days and a grant at most 365 days; a lifetime beyond a year and
# a day is nonsense, never one to keep. Without the field, larksuite/cli assumes 7 days.
MAX_REFRESH_EXPIRE = 366 * 86400.0
REFRESH_EXPIRE_DEFAULT = 604800.0


class UserRule(enum.StrEnum):
    """What the OAuth client makes of a user-token endpoint's answer code."""

    OK = "ok"
    # A refresh refused for good: the grant is over (ReauthorizationRequired, with the row's
    # reason; for 20064 / 20073 the caller first re-reads its store for a newer grant).
    REAUTHORIZE = "reauthorize"
    CODE_REFUSED = "code_refused"  # the authorization code is dead: the login failed
    # The app or the user is refused (client credentials, an access policy, a malformed
    # request): AuthError on a refresh, which keeps the grant; a failed login on a code exchange.
    PERMANENT = "permanent"
    RATE_LIMITED = "rate_limited"  # RateLimitedError, as for app tokens
    TOKEN_INVALID = "token_invalid"  # business APIs: the user token sent is invalid or expired
    TRANSIENT = "transient"  # UpstreamError: retry with backoff, keep the grant


@dataclasses.dataclass(frozen=True, slots=True)
class UserCodeRule:
    code: int
    rule: UserRule
    meaning: str
    reason: str | None = None  # ReauthorizationRequired.reason, for the REAUTHORIZE rows


_U = UserRule
USER_TOKEN_CODES: Mapping[int, UserCodeRule] = MappingProxyType(
    {
        row.code: row
        for row in (
            UserCodeRule(0, _U.OK, "ok"),
            UserCodeRule(20003, _U.CODE_REFUSED, "authorization code not found"),
            UserCodeRule(20004, _U.CODE_REFUSED, "authorization code expired"),
            UserCodeRule(20065, _U.CODE_REFUSED, "authorization code already used"),
            UserCodeRule(20064, _U.REAUTHORIZE, "refresh token revoked", "revoked"),
            UserCodeRule(20073, _U.REAUTHORIZE, "refresh token already used", "revoked"),
            UserCodeRule(20037, _U.REAUTHORIZE, "refresh token expired", "expired"),
            UserCodeRule(20026, _U.REAUTHORIZE, "refresh token invalid", "invalid"),
            UserCodeRule(
                20024, _U.REAUTHORIZE, "code or refresh token of another app", "wrong_app"
            ),
            UserCodeRule(
                20074, _U.REAUTHORIZE, "refreshing user tokens not enabled", "refresh_disabled"
            ),
            UserCodeRule(20050, _U.TRANSIENT, "server error"),
            UserCodeRule(20001, _U.PERMANENT, "a parameter missing or malformed"),
            UserCodeRule(20002, _U.PERMANENT, "client_id or client_secret invalid"),
            UserCodeRule(20049, _U.PERMANENT, "code_verifier missing or not matching"),
            UserCodeRule(20071, _U.PERMANENT, "redirect_uri not allowed or not the code's"),
            UserCodeRule(21000, _U.PERMANENT, "blocked by an access-control policy"),
            UserCodeRule(21001, _U.PERMANENT, "blocked by an access-control policy"),
            UserCodeRule(99991668, _U.TOKEN_INVALID, "user access token invalid"),
            UserCodeRule(99991677, _U.TOKEN_INVALID, "user access token expired"),
        )
    }
)


def user_rule_for(code: int, status: int | None = None) -> UserRule:
    """The rule for a user-token answer. A definite refusal wins over the HTTP status; rate
    limiting (99991400, HTTP 429) and the app-credential codes mean what they mean for app
    tokens (:func:`rule_for`); any other code is transient: a grant is never ended on an
    answer that is not a definite refusal."""
    row = USER_TOKEN_CODES.get(code)
    if row is not None and row.rule is not UserRule.TRANSIENT:
        return row.rule
    app_rule = rule_for(code, status)
    if app_rule is Rule.RATE_LIMITED:
        return UserRule.RATE_LIMITED
    if app_rule is Rule.PERMANENT:
        return UserRule.PERMANENT
    return UserRule.TRANSIENT
