"""Scripted replies (the faults an upstream can produce), request records and gates of the
fake Feishu server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from actors.feishu._protocol import (
    CODE_FIELD,
    CONTENT_TYPE,
    EXPIRE_FIELD,
    MSG_FIELD,
    RATE_LIMIT_RESET_HEADER,
)
from actors.testing._protocol import OK, RATE_LIMITED, token_field

__all__ = [
    "Exchange",
    "Gate",
    "Headers",
    "RecordedRequest",
    "Reply",
    "dump_json",
    "matches",
    "render_body",
]

_BAD_GATEWAY = "<html><body>502 Bad Gateway</body></html>"
_TOO_MANY = "<html><body>429 Too Many Requests</body></html>"

Match = tuple[str, str | None, str | None]  # (kind or "any", app_id or None, tenant_key or None)
Headers = tuple[tuple[str, str], ...]  # a request's header lines, as they came


@dataclass(frozen=True)
class RecordedRequest:
    """One request as seen on arrival (``at`` on the server's clock); never a secret or ticket.

    ``kind`` is ``"app"``, ``"tenant"``, ``"resend"``, ``"business"`` (an Open API call that
    takes a bearer token) or ``"unknown"``; for a marketplace tenant token ``app_id`` is the
    owner of the presented app_access_token, for a business call ``app_id`` and ``tenant_key``
    are those of the token it carried (None for a token the server does not know).

    ``method`` and ``query`` (the URL's part after ``?``) are the request line's; ``token`` is
    the bearer token of the ``Authorization`` header, ``headers`` every header line
    as it came (over loopback HTTP; the in-process adapter passes none) and ``body`` the raw
    body of a business call (a token request's body holds the secret: it is never kept).
    Headers and body take no part in comparisons.
    """

    path: str
    kind: str
    app_id: str | None
    tenant_key: str | None
    at: float
    method: str = "POST"
    query: str = ""
    token: str | None = None
    headers: Headers = field(default=(), compare=False, repr=False)
    body: bytes = field(default=b"", compare=False, repr=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class Reply:
    """A scripted answer, served instead of the normal one. Build it with the classmethods.

    The faults an upstream (or a gateway in front of it) can produce, one classmethod each:

    - error codes: :meth:`code` (any code, HTTP status and headers);
    - rate limiting: :meth:`rate_limited` (JSON 99991400) and :meth:`gateway_rate_limited` (an
      HTML 429 page), both with ``x-ogw-ratelimit-reset``;
    - non-JSON gateway pages: :meth:`http` (``Reply.http(502)`` is an HTML 502);
    - any exact body: :meth:`raw` (e.g. ``"expire":1e400`` spelled literally);
    - unusable lifetimes: :meth:`ok` with ``expire`` huge, ``nan``, ``inf``, ``0`` or negative;
    - broken JSON with complete framing: :meth:`truncated`;
    - a connection closed without an answer: :meth:`disconnect`;
    - a connection reset mid-body: :meth:`reset_mid_body`;
    - a slow answer, one byte at a time: :meth:`drip` (the body, or the head too);
    - a hang is not a reply: :meth:`FakeFeishu.hold` blocks matching requests until the gate is
      released (or the server stops).

    Dripping and resets need a socket: the in-process adapter (:meth:`FakeFeishu.adapter`)
    serves a dripping reply at once and turns a reset into a ``requests.ConnectionError``.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    token: str | None = None
    expire: float | None = None
    drip_interval: float = 0.0  # > 0: seconds between the bytes of the answer (:meth:`drip`)
    drip_head: bool = False  # drip the status line and headers too, not only the body
    cut_after: int | None = None  # send this many body bytes, then reset the connection

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
    def gateway_rate_limited(cls, reset: float = 1.0) -> Reply:
        """HTTP 429 with an HTML page (a gateway's, no JSON code) and ``x-ogw-ratelimit-reset``
        set to ``reset`` seconds: rate limiting all the same."""
        return cls.http(429, _TOO_MANY, headers={RATE_LIMIT_RESET_HEADER: str(reset)})

    @classmethod
    def http(
        cls,
        status: int,
        body: str = _BAD_GATEWAY,
        *,
        content_type: str = "text/html",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A non-JSON body, as a gateway in front of Feishu would send (default: an HTML 502)."""
        return cls(status, body.encode(), content_type, tuple((headers or {}).items()))

    @classmethod
    def raw(
        cls,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = CONTENT_TYPE,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Exactly this body (JSON content type by default), for bodies no builder spells, such
        as ``{"code":0,"tenant_access_token":"t-x","expire":1e400}``."""
        data = body.encode() if isinstance(body, str) else body
        return cls(status, data, content_type, tuple((headers or {}).items()))

    @classmethod
    def truncated(cls) -> Reply:
        """HTTP 200 with JSON cut off mid-key (correctly framed: the Content-Length matches)."""
        field = token_field("tenant")
        whole = json.dumps({CODE_FIELD: OK, MSG_FIELD: "ok", field: "t-cut"})
        return cls(200, whole[: whole.index(field) + len(field) - 2].encode())

    @classmethod
    def disconnect(cls) -> Reply:
        """Close the connection without answering; the client sees a connection error."""
        return cls(drop=True)

    @classmethod
    def reset_mid_body(cls, reply: Reply | None = None, *, after: int = 16) -> Reply:
        """Send the status line, the headers (with the whole body's Content-Length) and the first
        ``after`` bytes of ``reply``'s body (default: a success), then reset the connection
        (RST): the client's read breaks mid-body. At least one byte is always left unsent."""
        if after < 0:
            raise ValueError(f"Reply.reset_mid_body: after must be >= 0, got {after!r}")
        return replace(reply if reply is not None else cls.raw(_whole_success()), cut_after=after)

    @classmethod
    def drip(cls, reply: Reply, interval: float = 0.3, *, head: bool = False) -> Reply:
        """``reply``, sent slowly: the status line and headers at once, then the body one byte
        every ``interval`` real seconds; with ``head=True`` the status line and headers drip
        too. A client whose only bound is a per-read timeout waits as long as the server likes.
        The drip stops when the client hangs up or the server stops."""
        if not interval > 0:
            raise ValueError(f"Reply.drip: interval must be > 0, got {interval!r}")
        return replace(reply, drip_interval=float(interval), drip_head=head)

    @classmethod
    def ok(cls, token: str, expire: float) -> Reply:
        """Success with exactly this token (named after the request kind) and ``expire``.

        The server then accepts the token (:meth:`FakeFeishu.valid_token`) for ``expire`` s.
        ``expire`` may be anything a broken upstream might send: ``1e10``, ``float("nan")``,
        ``float("inf")``, ``0``, ``-5``; non-finite values are written the way Python's json
        writes them (``NaN``, ``Infinity``, ``-Infinity``), which Python's json also reads.
        """
        return cls(token=token, expire=expire)


def _whole_success() -> bytes:
    return dump_json({CODE_FIELD: OK, MSG_FIELD: "ok", token_field("tenant"): "t-cut"})


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

    def wait_for_waiting(self, n: int, *, timeout: float = 5.0) -> bool:
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
    # allow_nan: a scripted NaN or infinite expire goes out as NaN / Infinity, as a broken
    # upstream written in Python would send it.
    return json.dumps(payload, separators=(",", ":"), allow_nan=True).encode()


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
