"""The auth v3 protocol as the fake server speaks it: routes, request and response field names,
and the response codes it sends.

Routes and field names are read from the client's table in ``actors.feishu._protocol``: a
route the two disagree on fails every test that fetches a token. The codes are written out
here, with what each means for a token manager (:data:`MEANINGS`), from the error code table
of ``docs/feishu-protocol.md``, not read from the client's table: they are the independent
oracle, so a wrong row in that table fails the tests instead of passing them along.

User access tokens (OAuth; ``docs/feishu-protocol.md``, "User access tokens") have paths and codes
of their own, all written out here: :class:`UserCode` with what a token manager does with each
(:data:`USER_MEANINGS`) and the reason a refusal ends a grant with (:data:`USER_REASONS`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from actors._config import AppType, TokenKind
from actors.feishu._protocol import ENDPOINTS, RESEND, Endpoint, Rule, endpoint_for

__all__ = [
    "APP_ID",
    "APP_SECRET",
    "APP_TICKET",
    "APP_TOKEN",
    "APP_TOKEN_INVALID",
    "AUTHORIZE",
    "AUTHORIZE_PATH",
    "BAD_BODY",
    "BAD_SECRET",
    "CALENDARS_PATH",
    "FIELD_INVALID",
    "JSAPI_TICKET_PATH",
    "MARKETPLACE_TENANT",
    "MEANINGS",
    "NOT_FOUND",
    "OAUTH_KINDS",
    "OAUTH_V2_PATH",
    "OAUTH_V3_PATH",
    "OK",
    "RATE_LIMITED",
    "ROUTES",
    "TENANT_KEY",
    "TENANT_TOKEN_INVALID",
    "TICKET_INVALID",
    "TOKEN_MALFORMED",
    "TOKEN_MISSING",
    "UNKNOWN_APP",
    "USER",
    "USER_INFO_PATH",
    "USER_MEANINGS",
    "USER_REASONS",
    "UserCode",
    "UserRule",
    "token_field",
]

ROUTES: Mapping[str, Endpoint] = MappingProxyType({e.path: e for e in (*ENDPOINTS, RESEND)})
MARKETPLACE_TENANT = endpoint_for(AppType.MARKETPLACE, TokenKind.TENANT)

# Unpacked from the table rather than spelled out: the marketplace app request is the secrets plus
# the ticket, and the marketplace tenant request carries the app token instead of the secrets.
APP_ID, APP_SECRET, APP_TICKET = endpoint_for(AppType.MARKETPLACE, TokenKind.APP).request_fields
APP_TOKEN, TENANT_KEY = MARKETPLACE_TENANT.request_fields

OK = 0
UNKNOWN_APP = 10003  # invalid param: a wrong app_id (or tenant_key), an unpublished app
BAD_SECRET = 10014  # app secret invalid
TICKET_INVALID = 10012  # app_ticket invalid
RATE_LIMITED = 99991400  # frequency limit
TENANT_TOKEN_INVALID = 99991663  # on business routes
APP_TOKEN_INVALID = 99991664  # on business routes and the marketplace tenant endpoint
TOKEN_MALFORMED = 99991671  # access token invalid (format)
TOKEN_MISSING = 99991661  # no access token sent
# Not auth codes, so not in the protocol table (the client reads them as any other code): a
# body that is not JSON, an unknown path, a business call whose fields fail validation.
BAD_BODY = 9499
NOT_FOUND = 404
FIELD_INVALID = 99992402

# What the protocol doc says a token manager does with each code the fake sends.
MEANINGS: Mapping[int, Rule] = MappingProxyType(
    {
        OK: Rule.OK,
        UNKNOWN_APP: Rule.PERMANENT,
        BAD_SECRET: Rule.PERMANENT,
        TICKET_INVALID: Rule.TICKET_INVALID,
        RATE_LIMITED: Rule.RATE_LIMITED,
        TENANT_TOKEN_INVALID: Rule.TOKEN_INVALID,
        APP_TOKEN_INVALID: Rule.TOKEN_INVALID,
        TOKEN_MALFORMED: Rule.TOKEN_INVALID,
        TOKEN_MISSING: Rule.CALLER_BUG,
        BAD_BODY: Rule.TRANSIENT,
        NOT_FOUND: Rule.TRANSIENT,
        FIELD_INVALID: Rule.TRANSIENT,
    }
)


def token_field(kind: str) -> str:
    """The response field a scripted token is served in for a request of ``kind``; requests that
    answer no token of their own (resend, unknown paths) get the tenant field."""
    token_kind = TokenKind.APP if kind == TokenKind.APP else TokenKind.TENANT
    return _TOKEN_FIELDS[token_kind]


_TOKEN_FIELDS = {
    e.kind: e.token_field for e in ENDPOINTS if e.kind is not None and e.token_field is not None
}


# --- user access tokens (OAuth) ----------------------------------------------------------------

# Kinds user-token traffic is recorded, scripted and held under: the authorize page, and the
# token endpoints (both grant types, both endpoints).
AUTHORIZE = "authorize"
USER = "user"
OAUTH_KINDS = frozenset({AUTHORIZE, USER})

# Real Feishu serves the first two on the accounts host (accounts.feishu.cn), the rest on the Open
# Platform host; the fake serves every path on its one base URL.
AUTHORIZE_PATH = "/open-apis/authen/v1/authorize"  # GET, in the user's browser
OAUTH_V3_PATH = "/oauth/v3/token"
OAUTH_V2_PATH = "/open-apis/authen/v2/oauth/token"
USER_INFO_PATH = "/open-apis/authen/v1/user_info"  # GET, Authorization: Bearer <user token>
CALENDARS_PATH = "/open-apis/calendar/v4/calendars"  # GET, a business route taking user tokens
JSAPI_TICKET_PATH = "/open-apis/jssdk/ticket/get"  # POST, tenant token: {ticket, expire_in}


class UserCode(enum.IntEnum):
    """The codes of the user-token side. A class, not module constants: the client's auth table
    (``MEANINGS`` above) has no rows for them, and :data:`USER_MEANINGS` says what they mean."""

    # The token endpoints, code exchange (the login fails; the user tries again).
    CODE_NOT_FOUND = 20003
    CODE_EXPIRED = 20004
    CODE_USED = 20065
    # The token endpoints, refresh.
    REFRESH_INVALID = 20026  # never issued (or a v1 token)
    REFRESH_EXPIRED = 20037  # past refresh_token_expires_in, or 365 days after the grant
    REFRESH_REVOKED = 20064  # already redeemed (a lost rotation race), or the user revoked it
    REFRESH_USED = 20073  # already redeemed; the fake answers a reuse with 20064
    WRONG_APP = 20024  # a code or refresh token of another app
    REFRESH_DISABLED = 20074  # the app's "refresh user_access_token" switch is off
    SERVER_ERROR = 20050  # with HTTP 500: transient
    BLOCKED = 21000  # an access-control policy blocked the user (only when scripted)
    # Malformed requests (third-party lists of Feishu's table; the fake's own choice of code).
    BAD_REQUEST = 20001  # a parameter missing or malformed
    BAD_CLIENT = 20002  # unknown client_id, or a wrong client_secret
    PKCE_FAILED = 20049  # code_verifier missing or not matching the code_challenge
    REDIRECT_MISMATCH = 20071  # redirect_uri not allowed, or not the one the code was issued for
    # Business routes called with a user access token.
    USER_TOKEN_INVALID = 99991668  # never issued, revoked, or not a user token
    USER_TOKEN_EXPIRED = 99991677  # issued, past its expires_in


class UserRule(enum.StrEnum):
    """What a token manager does with a user-token code."""

    OK = "ok"
    TRANSIENT = "transient"  # retry with backoff, keep the stored grant
    REREAD = "reread"  # re-read the store: adopt a newer grant, else reauthorization
    REAUTHORIZE = "reauthorize"  # the grant is over: the user must log in again
    LOGIN_FAILED = "login_failed"  # the code exchange failed: the user tries again
    BLOCKED = "blocked"  # surface to the user
    # The request itself is wrong (configuration or caller bug): on a code exchange the login
    # fails; on a refresh an error that keeps the grant (retrying the same request cannot help).
    REFUSED = "refused"
    ROTATE_AND_RETRY = "rotate_and_retry"  # business call: rotate exactly that token, retry once


_C = UserCode
USER_MEANINGS: Mapping[UserCode, UserRule] = MappingProxyType(
    {
        _C.CODE_NOT_FOUND: UserRule.LOGIN_FAILED,
        _C.CODE_EXPIRED: UserRule.LOGIN_FAILED,
        _C.CODE_USED: UserRule.LOGIN_FAILED,
        _C.REFRESH_INVALID: UserRule.REAUTHORIZE,
        _C.REFRESH_EXPIRED: UserRule.REAUTHORIZE,
        _C.REFRESH_REVOKED: UserRule.REREAD,
        _C.REFRESH_USED: UserRule.REREAD,
        _C.WRONG_APP: UserRule.REAUTHORIZE,
        _C.REFRESH_DISABLED: UserRule.REAUTHORIZE,
        _C.SERVER_ERROR: UserRule.TRANSIENT,
        _C.BLOCKED: UserRule.BLOCKED,
        _C.BAD_REQUEST: UserRule.REFUSED,
        _C.BAD_CLIENT: UserRule.REFUSED,
        _C.PKCE_FAILED: UserRule.REFUSED,
        _C.REDIRECT_MISMATCH: UserRule.REFUSED,
        _C.USER_TOKEN_INVALID: UserRule.ROTATE_AND_RETRY,
        _C.USER_TOKEN_EXPIRED: UserRule.ROTATE_AND_RETRY,
    }
)

# The ``ReauthorizationRequired.reason`` a definite refusal of a refresh ends the grant with
# (20064 / 20073 only once the store holds nothing newer).
USER_REASONS: Mapping[UserCode, str] = MappingProxyType(
    {
        _C.REFRESH_REVOKED: "revoked",
        _C.REFRESH_USED: "revoked",
        _C.REFRESH_EXPIRED: "expired",
        _C.REFRESH_INVALID: "invalid",
        _C.WRONG_APP: "wrong_app",
        _C.REFRESH_DISABLED: "refresh_disabled",
    }
)
