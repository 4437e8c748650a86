"""Scripted replies, request records and gates of the fake Feishu server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from actors._feishu import (
    CODE_FIELD,
    CONTENT_TYPE,
    EXPIRE_FIELD,
    MSG_FIELD,
    RATE_LIMIT_RESET_HEADER,
)
from actors.testing._protocol import OK, RATE_LIMITED, token_field

__all__ = ["Exchange", "Gate", "RecordedRequest", "Reply", "dump_json", "matches", "render_body"]

_BAD_GATEWAY = "<html><body>502 Bad Gateway</body></html>"

Match = tuple[str, str | None, str | None]  # (kind or "any", app_id or None, tenant_key or None)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as seen on arrival (``at`` on the server's clock); never a secret or ticket.

    ``kind`` is ``"app"``, ``"tenant"``, ``"resend"`` or ``"unknown"``; for a marketplace tenant
    token ``app_id`` is the owner of the presented app_access_token.
    """

    path: str
    kind: str
    app_id: str | None
    tenant_key: str | None
    at: float


@dataclass(frozen=True)
class Reply:
    """A scripted answer, served instead of the normal one. Build it with the classmethods."""

    status: int = 200
    body: bytes = b""
    content_type: str = CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    token: str | None = None
    expire: int | None = None

    @classmethod
    def code(
        cls,
        code: int,
        msg: str = "error",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A JSON ``{"code": code, "msg": msg}`` body with the given HTTP status and headers."""
        extra = tuple((headers or {}).items())
        return cls(status, dump_json({CODE_FIELD: code, MSG_FIELD: msg}), headers=extra)

    @classmethod
    def rate_limited(cls, reset: float = 1.0) -> Reply:
        """HTTP 429, code 99991400, and ``x-ogw-ratelimit-reset`` set to ``reset`` seconds."""
        headers = {RATE_LIMIT_RESET_HEADER: str(reset)}
        return cls.code(
            RATE_LIMITED, "request trigger frequency limit", status=429, headers=headers
        )

    @classmethod
    def http(
        cls, status: int, body: str = _BAD_GATEWAY, *, content_type: str = "text/html"
    ) -> Reply:
        """A non-JSON body, as a gateway in front of Feishu would send."""
        return cls(status, body.encode(), content_type)

    @classmethod
    def truncated(cls) -> Reply:
        """HTTP 200 with JSON cut off mid-key, as when an upstream connection breaks."""
        field = token_field("tenant")
        whole = json.dumps({CODE_FIELD: OK, MSG_FIELD: "ok", field: "t-cut"})
        return cls(200, whole[: whole.index(field) + len(field) - 2].encode())

    @classmethod
    def disconnect(cls) -> Reply:
        """Close the connection without answering; the client sees a connection error."""
        return cls(drop=True)

    @classmethod
    def ok(cls, token: str, expire: int) -> Reply:
        """Success with exactly this token (named after the request kind) and ``expire``.

        The server then accepts the token (:meth:`FakeFeishu.valid_token`) for ``expire`` s.
        """
        return cls(token=token, expire=expire)


@dataclass(frozen=True)
class Exchange:
    """How the server answers one request, handed to the transport that carries it: the reply,
    the request kind (a token reply names its field by it), an action to run once the answer is
    sent (the app_ticket push), and whether the connection should close."""

    reply: Reply
    kind: str
    after: Callable[[], None] | None
    close: bool


class Gate:
    """Blocks every matching request until :meth:`release`. Made by :meth:`FakeFeishu.hold`."""

    def __init__(self, kind: str, app_id: str | None, tenant_key: str | None) -> None:
        self.match: Match = (kind, app_id, tenant_key)
        self._open = threading.Event()
        self._cond = threading.Condition()
        self._waiting = 0

    def release(self) -> None:
        """Let every blocked and future matching request through."""
        self._open.set()

    @property
    def waiting(self) -> int:
        """How many requests are blocked on this gate right now."""
        with self._cond:
            return self._waiting

    def wait_for_waiting(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests are blocked here; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting >= n, timeout)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def wait_pass(self) -> None:
        """Called by the server's handler thread: block here until released."""
        if self._open.is_set():
            return
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()
        try:
            self._open.wait()
        finally:
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()


def matches(match: Match, req: RecordedRequest) -> bool:
    kind, app_id, tenant_key = match
    return (
        kind in ("any", req.kind)
        and (app_id is None or app_id == req.app_id)
        and (tenant_key is None or tenant_key == req.tenant_key)
    )


def dump_json(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def render_body(reply: Reply, kind: str) -> bytes:
    """The bytes of ``reply`` for a request of ``kind`` (a token reply names its field by kind)."""
    if reply.token is None:
        return reply.body
    return dump_json(
        {
            CODE_FIELD: OK,
            MSG_FIELD: "ok",
            token_field(kind): reply.token,
            EXPIRE_FIELD: reply.expire,
        }
    )
