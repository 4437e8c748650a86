"""Business Open API routes of the fake Feishu server: calls that carry ``Authorization: Bearer``.

A few real routes, answered the way Feishu answers them: with a token the server issued and still
accepts (not rotated away, not expired) ``{"code": 0, "msg": "success", "data": {...}}``; with a
revoked, expired or unknown token the invalid-token code of the route's token kind (99991663 for
tenant routes, 99991664 for the app route, 99991671 for a token not even shaped like one; on user
routes 99991668, or 99991677 for a user token the server issued that has expired), with
HTTP 400 by default (real Feishu uses 200 as well: :meth:`BusinessApi.set_invalid_status`);
without a bearer token 99991661. The codes are the fake's own (``actors.testing._protocol``),
written out independently of the client's table.

The routes are those of the official SDK's requests (``lark_oapi``):

- ``GET /open-apis/im/v1/chats`` (``ListChatRequest``, tenant token): the token's tenant's chats;
- ``POST /open-apis/im/v1/messages?receive_id_type=...`` (``CreateMessageRequest``, tenant
  token, JSON body with ``receive_id``, ``msg_type``, ``content``): the message created;
- ``POST /open-apis/authen/v1/oidc/access_token`` (``CreateOidcAccessTokenRequest``, app token,
  JSON body with ``grant_type`` and ``code``): a user access token;
- ``GET /open-apis/authen/v1/user_info`` (``GetUserInfoRequest``, user token): who the token's
  user is (``open_id``, ``union_id``, ``name``, ``tenant_key``, ...);
- ``GET /open-apis/calendar/v4/calendars`` (``ListCalendarRequest``, user token here; Feishu
  takes a tenant token too): the user's primary calendar;
- ``POST /open-apis/jssdk/ticket/get`` (tenant token): the tenant's jsapi_ticket and its
  ``expire_in``, the same ticket while the refresh window remains (as tokens are).

Business calls are recorded as ``RecordedRequest`` of kind ``"business"`` with the token they
carried, their headers and body, and take scripted replies (``server.script("business", ...)``)
and holds like token requests.

Also here: the loopback transport with GET and the request headers passed on. The base
transport (``_transports``) serves POST only and hands the server no headers; this subclass can
go once it does.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, cast
from urllib.parse import parse_qs

import actors.testing._transports as transports
from actors._config import TokenKind
from actors.feishu._protocol import CODE_FIELD, MSG_FIELD
from actors.testing._ledger import Issued, Ledger
from actors.testing._protocol import (
    APP_TOKEN_INVALID,
    CALENDARS_PATH,
    FIELD_INVALID,
    JSAPI_TICKET_PATH,
    OK,
    TENANT_TOKEN_INVALID,
    TOKEN_MALFORMED,
    TOKEN_MISSING,
    USER,
    USER_INFO_PATH,
    UserCode,
)
from actors.testing._replies import Exchange, Headers, RecordedRequest, Reply, dump_json

__all__ = ["BUSINESS", "ROUTES", "BusinessApi", "BusinessServer", "Route"]

BUSINESS = "business"  # the kind business calls are recorded, scripted and held under
JSAPI_TICKET = "jsapi_ticket"  # what the ledger issues the JSSDK's tickets as

_INVALID: dict[str, int] = {
    TokenKind.TENANT: TENANT_TOKEN_INVALID,
    TokenKind.APP: APP_TOKEN_INVALID,
    USER: UserCode.USER_TOKEN_INVALID,
}
_MESSAGES = {
    TOKEN_MISSING: "Missing access token for authorization. Please make a request with token "
    "attached.",
    TENANT_TOKEN_INVALID: "Invalid access token for authorization. Please make a request with "
    "token attached.",
    APP_TOKEN_INVALID: "Invalid app access token for authorization. Please make a request with "
    "app access token attached.",
    TOKEN_MALFORMED: "Invalid access token for authorization. Please check the access token "
    "format.",
    UserCode.USER_TOKEN_INVALID: "Invalid access token for authorization. Please make a request "
    "with token attached.",
    UserCode.USER_TOKEN_EXPIRED: "Authentication token expired. Please refresh the user access "
    "token.",
}
_TOKEN_PREFIXES = ("t-", "a-", "u-")  # how tenant, app and user tokens start
_RECEIVE_ID_TYPES = frozenset({"open_id", "user_id", "union_id", "email", "chat_id"})


@dataclass(frozen=True)
class Call:
    """What a route's answer may depend on: the accepted token's record, query and JSON body."""

    issued: Issued
    query: Mapping[str, str]
    body: Mapping[str, object] | None
    ledger: Ledger | None = None  # for routes that issue something themselves


Data = dict[str, object]


@dataclass(frozen=True)
class Route:
    """One business route: the token kind it takes, and the ``data`` of a success (or a
    ``Reply`` for a request it refuses)."""

    method: str
    path: str
    kind: str  # a TokenKind, or USER
    answer: Callable[[Call], Data | Reply]


def _list_chats(call: Call) -> Data:
    issued = call.issued
    tenant = issued.tenant_key or "fake-tenant"
    chat = {
        "chat_id": f"oc_{issued.app_id}_{tenant}",
        "avatar": "",
        "name": f"{tenant} general",
        "description": "a chat of the fake Feishu server",
        "owner_id": "ou_fake_owner",
        "owner_id_type": "open_id",
        "external": False,
        "tenant_key": tenant,
        "chat_status": "normal",
    }
    return {"items": [chat], "page_token": "", "has_more": False}


def _create_message(call: Call) -> Data | Reply:
    receive_id_type = call.query.get("receive_id_type")
    if receive_id_type not in _RECEIVE_ID_TYPES:
        return _field_invalid("receive_id_type is required (open_id, chat_id, ...)")
    body = call.body or {}
    fields = {name: body.get(name) for name in ("receive_id", "msg_type", "content")}
    missing = [name for name, value in fields.items() if not isinstance(value, str) or not value]
    if missing:
        return _field_invalid(f"missing {', '.join(missing)}")
    issued, millis = call.issued, "1700000000000"
    return {
        "message_id": f"om_{secrets.token_hex(8)}",
        "msg_type": fields["msg_type"],
        "create_time": millis,
        "update_time": millis,
        "deleted": False,
        "updated": False,
        "chat_id": fields["receive_id"] if receive_id_type == "chat_id" else "oc_p2p_fake",
        "sender": {
            "id": issued.app_id,
            "id_type": "app_id",
            "sender_type": "app",
            "tenant_key": issued.tenant_key or "fake-tenant",
        },
        "body": {"content": fields["content"]},
    }


def _user_access_token(call: Call) -> Data | Reply:
    body = call.body or {}
    if body.get("grant_type") != "authorization_code" or not body.get("code"):
        return _field_invalid("grant_type must be authorization_code, with a code")
    return {
        "access_token": f"u-{secrets.token_hex(16)}",
        "refresh_token": f"ur-{secrets.token_hex(16)}",
        "token_type": "Bearer",
        "expires_in": 6900,
        "refresh_expires_in": 2591700,
        "scope": "",
    }


def _user_info(call: Call) -> Data:
    user = call.issued.user
    assert user is not None  # only user tokens reach user routes
    data: Data = {
        "name": user.name,
        "en_name": user.name,
        "avatar_url": "",
        "open_id": user.open_id,
        "union_id": user.union_id,
        "tenant_key": user.tenant_key,
    }
    return data | ({"user_id": user.user_id} if user.user_id is not None else {})


def _list_calendars(call: Call) -> Data:
    user = call.issued.user
    assert user is not None  # only user tokens reach user routes
    calendar = {
        "calendar_id": f"feishu.cn_{user.open_id}@group.calendar.feishu.cn",
        "summary": user.name,
        "description": "",
        "permissions": "private",
        "type": "primary",
        "role": "owner",
        "is_deleted": False,
        "is_third_party": False,
    }
    return {"has_more": False, "page_token": "", "sync_token": "", "calendar_list": [calendar]}


def _jsapi_ticket(call: Call) -> Data:
    # The tenant's current ticket while the refresh window remains, as for tokens.
    issued, ledger = call.issued, call.ledger
    assert ledger is not None
    ticket, expire_in = ledger.grant(issued.app_id, JSAPI_TICKET, issued.tenant_key)
    return {"ticket": ticket, "expire_in": expire_in}


def _field_invalid(detail: str) -> Reply:
    return Reply.code(FIELD_INVALID, f"field validation failed: {detail}", status=400)


ROUTES: Mapping[tuple[str, str], Route] = MappingProxyType(
    {
        (route.method, route.path): route
        for route in (
            Route("GET", "/open-apis/im/v1/chats", TokenKind.TENANT, _list_chats),
            Route("POST", "/open-apis/im/v1/messages", TokenKind.TENANT, _create_message),
            Route(
                "POST", "/open-apis/authen/v1/oidc/access_token", TokenKind.APP, _user_access_token
            ),
            Route("GET", USER_INFO_PATH, USER, _user_info),
            Route("GET", CALENDARS_PATH, USER, _list_calendars),
            Route("POST", JSAPI_TICKET_PATH, TokenKind.TENANT, _jsapi_ticket),
        )
    }
)


class BusinessApi:
    """The business routes of one FakeFeishu, over its ledger of issued tokens.

    :meth:`identify` and :meth:`answer` run under the server's lock (passed in), as the ledger
    is not thread-safe; the public methods take it themselves.
    """

    def __init__(self, ledger: Ledger, lock: threading.Lock) -> None:
        self._ledger = ledger
        self._lock = lock
        self._invalid_status = 400

    def set_invalid_status(self, status: int) -> None:
        """The HTTP status of invalid-token and missing-token answers: 400 (the default) or
        200 (real Feishu uses both, with the same JSON body)."""
        if not 100 <= status <= 599:
            raise ValueError(f"FakeFeishu: not an HTTP status: {status!r}")
        with self._lock:
            self._invalid_status = status

    @staticmethod
    def route(method: str, path: str) -> Route | None:
        return ROUTES.get((method, path))

    def identify(
        self, route: Route, query: str, headers: Headers, raw: bytes, now: float
    ) -> RecordedRequest:
        """The record of a business call: the bearer token it carried and that token's owner."""
        authorization = next((v for k, v in headers if k.lower() == "authorization"), None)
        # The fake parses the header itself: an oracle independent of the client's own parser.
        scheme, _, credential = (authorization or "").partition(" ")
        token = credential or None if scheme == "Bearer" else None
        issued = self._ledger.find(token) if token is not None else None
        return RecordedRequest(
            route.path,
            BUSINESS,
            issued.app_id if issued is not None else None,
            issued.tenant_key if issued is not None else None,
            now,
            method=route.method,
            query=query,
            token=token,
            headers=headers,
            body=raw,
        )

    def answer(self, req: RecordedRequest) -> Reply:
        """The answer to a business call (made by :meth:`identify`) that no script took."""
        route, raw = ROUTES[req.method, req.path], req.body
        if req.token is None:
            return self._refuse(TOKEN_MISSING)
        issued = self._ledger.alive(req.token)
        if issued is None or issued.kind != route.kind:
            if not req.token.startswith(_TOKEN_PREFIXES):
                return self._refuse(TOKEN_MALFORMED)
            known = self._ledger.find(req.token)
            expired = known is not None and known.kind == USER == route.kind
            return self._refuse(UserCode.USER_TOKEN_EXPIRED if expired else _INVALID[route.kind])
        body = _json_object(raw)
        if raw.strip() and body is None:
            return _field_invalid("the body is not a JSON object")
        params = {name: values[-1] for name, values in parse_qs(req.query).items()}
        data = route.answer(Call(issued, params, body, self._ledger))
        if isinstance(data, Reply):
            return data
        return Reply.raw(dump_json({CODE_FIELD: OK, MSG_FIELD: "success", "data": data}))

    def _refuse(self, code: int) -> Reply:
        return Reply.code(code, _MESSAGES[code], status=self._invalid_status)


def _json_object(raw: bytes) -> dict[str, object] | None:
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    return cast(dict[str, object], body) if isinstance(body, dict) else None


# --- the loopback transport, with GET and headers ----------------------------------------------


class _Server(Protocol):
    def handle(self, path: str, raw: bytes, *, method: str, headers: Headers) -> Exchange: ...


class _Handler(transports._Handler):
    """The base handler, answering GET too and passing on the method and the headers."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        fake = cast(_Server, self._server().fake)
        exchange = fake.handle(self.path, raw, method=method, headers=tuple(self.headers.items()))
        self._write(exchange)
        transports._after(exchange)


class BusinessServer(transports.LoopbackServer):
    """The loopback server of ``_transports``, with :class:`_Handler` for its requests."""

    def __init__(self, fake: transports.Handler) -> None:
        super().__init__(fake)
        self.RequestHandlerClass = _Handler
