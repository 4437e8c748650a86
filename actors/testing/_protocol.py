"""The auth v3 protocol as the fake server speaks it: routes, request and response field names,
and the response codes it sends.

Routes and field names are read from the client's table in ``actors.feishu._protocol``: a
route the two disagree on fails every test that fetches a token. The codes are written out
here, with what each means for a token manager (:data:`MEANINGS`), from the error code table
of ``docs/feishu-protocol.md``, not read from the client's table: they are the independent
oracle, so a wrong row in that table fails the tests instead of passing them along.
"""

from __future__ import annotations

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
    "BAD_BODY",
    "BAD_SECRET",
    "FIELD_INVALID",
    "MARKETPLACE_TENANT",
    "MEANINGS",
    "NOT_FOUND",
    "OK",
    "RATE_LIMITED",
    "ROUTES",
    "TENANT_KEY",
    "TENANT_TOKEN_INVALID",
    "TICKET_INVALID",
    "TOKEN_MALFORMED",
    "TOKEN_MISSING",
    "UNKNOWN_APP",
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
