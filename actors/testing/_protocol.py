"""The auth v3 protocol as the fake server speaks it, read from the one table in
``actors.feishu._protocol``: routes, request and response field names, and the response codes
it sends.

Everything but the two non-auth codes is derived from the table when the module is imported, so
a change to the table that the fake cannot follow fails at import, not deep inside a test.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from actors._config import AppType, TokenKind
from actors.feishu._protocol import CODES, ENDPOINTS, RESEND, Endpoint, Rule, endpoint_for

__all__ = [
    "APP_ID",
    "APP_SECRET",
    "APP_TICKET",
    "APP_TOKEN",
    "APP_TOKEN_INVALID",
    "BAD_BODY",
    "BAD_SECRET",
    "MARKETPLACE_TENANT",
    "NOT_FOUND",
    "OK",
    "RATE_LIMITED",
    "ROUTES",
    "TENANT_KEY",
    "TICKET_INVALID",
    "UNKNOWN_APP",
    "code_for",
    "token_field",
]

ROUTES: Mapping[str, Endpoint] = MappingProxyType({e.path: e for e in (*ENDPOINTS, RESEND)})
MARKETPLACE_TENANT = endpoint_for(AppType.MARKETPLACE, TokenKind.TENANT)

# Unpacked from the table rather than spelled out: the marketplace app request is the secrets plus
# the ticket, and the marketplace tenant request carries the app token instead of the secrets.
APP_ID, APP_SECRET, APP_TICKET = endpoint_for(AppType.MARKETPLACE, TokenKind.APP).request_fields
APP_TOKEN, TENANT_KEY = MARKETPLACE_TENANT.request_fields


def code_for(rule: Rule, meaning: str = "") -> int:
    """The one code in the table with ``rule`` whose meaning starts with ``meaning``.

    Codes are named by what they mean, so the fake can never answer a code the client would
    read differently.
    """
    found = [
        row.code for row in CODES.values() if row.rule is rule and row.meaning.startswith(meaning)
    ]
    if len(found) != 1:
        msg = (
            f"actors.feishu._protocol.CODES has {len(found)} {rule} codes meaning {meaning!r}, "
            "not one"
        )
        raise LookupError(msg)
    return found[0]


OK = code_for(Rule.OK)
UNKNOWN_APP = code_for(Rule.PERMANENT, "invalid param")
BAD_SECRET = code_for(Rule.PERMANENT, "app secret invalid")
TICKET_INVALID = code_for(Rule.TICKET_INVALID)
RATE_LIMITED = code_for(Rule.RATE_LIMITED)
APP_TOKEN_INVALID = code_for(Rule.TOKEN_INVALID, "app access token invalid")
# Answers to requests that never reach the auth logic (a body that is not JSON, an unknown path).
# They are not auth codes, so the table has no row for them: the client reads them as transient.
BAD_BODY = 9499
NOT_FOUND = 404


def token_field(kind: str) -> str:
    """The response field a scripted token is served in for a request of ``kind``; requests that
    answer no token of their own (resend, unknown paths) get the tenant field."""
    token_kind = TokenKind.APP if kind == TokenKind.APP else TokenKind.TENANT
    return _TOKEN_FIELDS[token_kind]


_TOKEN_FIELDS = {
    e.kind: e.token_field for e in ENDPOINTS if e.kind is not None and e.token_field is not None
}
