"""The invalid-token policy the integrations share (``actors._auth``): its steps, driven by
hand, its two drivers, and :class:`InvalidTokenContract`, the contract every HTTP client auth
keeps against the embedded fake server's business routes over real loopback HTTP.

The contract's test bodies are written once against :class:`Caller`; a client's test module
(``test_requests``, ``test_httpx``) subclasses it and gives the ``make_caller`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import re
import threading
import tracemalloc
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Protocol, cast

import httpx
import pykka
import pytest
import requests
from loguru import logger

import actors
from actors._auth import (
    CODE_PREFIX,
    USER_TOKEN_INVALID_CODES,
    AnsweredFrom,
    Fetch,
    Hosts,
    Invalidate,
    ReadCode,
    Rewind,
    Send,
    Step,
    TokenTarget,
    arun,
    bearer,
    bearer_of,
    body_start,
    code_of,
    exchange,
    invalid_codes,
    is_json,
    is_token_invalid,
    origin,
    response_code,
    rewind,
    run,
)
from actors.testing import FakeFeishu, RecordedRequest, Reply
from tests.conftest import APP_ID, MARKET_ID, SECRET, SystemFactory, forward_tickets
from tests.users.conftest import login

CHATS = "/open-apis/im/v1/chats"
MESSAGES = "/open-apis/im/v1/messages"
USER_TOKEN = "/open-apis/authen/v1/oidc/access_token"  # takes an app token
CALENDARS = "/open-apis/calendar/v4/calendars"  # takes a user token
TIMEOUT = 10.0
USER = actors.TokenKind.USER


# --- the policy, step by step -------------------------------------------------------------------


OWN = "https://open.feishu.cn"  # the app's base_url in the steps below
OWN_HOSTS = Hosts.of(OWN)
ELSEWHERE = "https://elsewhere.example/x"


def walk(
    codes: list[object],
    *,
    url: str = OWN + "/open-apis/im/v1/chats",
    answered_from: str = OWN + "/open-apis/im/v1/chats",
    resendable: bool = True,
    kind: actors.TokenKind = actors.TokenKind.TENANT,
) -> list[Step]:
    """The steps of one exchange to ``url`` with a token of ``kind`` whose answers carry
    ``codes``, in order (an answer stands for its code; the tokens handed out are t-1, t-2, ...;
    each answer comes from ``answered_from``; the body can be sent again if ``resendable``)."""
    flow = exchange(OWN_HOSTS, url, kind=kind)
    taken: list[Step] = []
    reply: object = None
    answers = iter(codes)
    tokens = (f"t-{n}" for n in range(1, 10))
    while True:
        try:
            step = flow.send(reply)
        except StopIteration:
            return taken
        taken.append(step)
        if isinstance(step, Fetch):
            reply = next(tokens)
        elif isinstance(step, Send):
            reply = next(answers)
        elif isinstance(step, AnsweredFrom):
            reply = answered_from
        elif isinstance(step, ReadCode):
            reply = step.answer
        elif isinstance(step, Rewind):
            reply = resendable
        else:
            reply = None


def judged(answer: object) -> list[Step]:
    """The steps that look at an answer from the app's own host."""
    return [AnsweredFrom(answer), ReadCode(answer)]


def test_an_answer_without_an_invalid_token_code_ends_the_exchange_after_one_send() -> None:
    assert walk([0]) == [Fetch(), Send("t-1"), *judged(0)]


@pytest.mark.parametrize("code", sorted(actors.TOKEN_INVALID_CODES))
def test_an_invalid_token_code_invalidates_the_token_sent_and_sends_once_with_the_next(
    code: int,
) -> None:
    # The resend's answer is final: it is never read.
    assert walk([code, 0]) == [
        Fetch(),
        Send("t-1"),
        *judged(code),
        Invalidate("t-1"),
        Rewind(),
        Fetch(),
        Send("t-2"),
    ]


def test_the_resend_is_the_last_send_whatever_its_answer() -> None:
    assert walk([99991663, 99991663])[-1] == Send("t-2")
    assert [s for s in walk([99991663, 99991663]) if isinstance(s, Send)] == [
        Send("t-1"),
        Send("t-2"),
    ]


@pytest.mark.parametrize("code", [99991672, None, "99991663", 99991663.0, True, 0])
def test_only_an_integer_invalid_token_code_asks_for_a_resend(code: object) -> None:
    assert not is_token_invalid(code)
    assert walk([code]) == [Fetch(), Send("t-1"), *judged(code)]


RESENT = [Invalidate("t-1"), Rewind(), Fetch(), Send("t-2")]  # what follows an invalid token


@pytest.mark.parametrize("code", [99991668, 99991677, *sorted(actors.TOKEN_INVALID_CODES)])
def test_a_user_token_refused_as_invalid_or_expired_is_invalidated_and_sent_once_more(
    code: int,
) -> None:
    # The access-token codes keep their meaning for a user token.
    steps = walk([code, 0], kind=actors.TokenKind.USER)

    assert steps == [Fetch(), Send("t-1"), *judged(code), *RESENT]
    assert is_token_invalid(code, kind=actors.TokenKind.USER)


@pytest.mark.parametrize("kind", [actors.TokenKind.TENANT, actors.TokenKind.APP])
@pytest.mark.parametrize("code", [99991668, 99991677])
def test_a_user_tokens_codes_say_nothing_about_a_tenant_or_app_token(
    kind: actors.TokenKind, code: int
) -> None:
    # A route that wants a user token answers so whatever else it is sent: refetching cannot help.
    assert walk([code], kind=kind) == [Fetch(), Send("t-1"), *judged(code)]
    assert not is_token_invalid(code, kind=kind) and not is_token_invalid(code)


def test_a_user_tokens_invalid_codes_are_its_own_and_the_access_token_ones() -> None:
    assert {99991663, 99991664, 99991671, 99991668, 99991677} == USER_TOKEN_INVALID_CODES
    assert invalid_codes(actors.TokenKind.USER) == USER_TOKEN_INVALID_CODES
    assert invalid_codes(actors.TokenKind.TENANT) == actors.TOKEN_INVALID_CODES
    assert invalid_codes(actors.TokenKind.APP) == actors.TOKEN_INVALID_CODES


def test_a_request_to_another_host_is_sent_without_a_token_and_its_answer_is_final() -> None:
    assert walk([99991663], url=ELSEWHERE) == [Send(None)]


def test_an_answer_from_another_host_is_final_whatever_its_code() -> None:
    # The end of a redirect chain that left the app's host: its body is not even read.
    steps = walk([99991663], answered_from=ELSEWHERE)

    assert steps == [Fetch(), Send("t-1"), AnsweredFrom(99991663)]


def test_a_body_that_cannot_be_sent_again_ends_the_exchange_with_its_token_invalidated() -> None:
    steps = walk([99991663], resendable=False)

    assert steps == [Fetch(), Send("t-1"), *judged(99991663), Invalidate("t-1"), Rewind()]


# --- where a token may go ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://open.feishu.cn/open-apis/x?y=1", ("https", "open.feishu.cn", 443)),
        ("HTTPS://Open.Feishu.CN:443", ("https", "open.feishu.cn", 443)),
        ("http://127.0.0.1:8080/", ("http", "127.0.0.1", 8080)),
        ("http://[::1]/x", ("http", "::1", 80)),
        ("https://open.feishu.cn:8443", ("https", "open.feishu.cn", 8443)),
    ],
)
def test_an_origin_is_the_scheme_host_and_port_a_request_connects_to(
    url: str, expected: tuple[str, str, int]
) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@127.0.0.1/",  # the standard library and urllib3 disagree
        "https://user:pw@open.feishu.cn/",
        "https://open.feishu.cn@evil.example/",
        "ftp://open.feishu.cn/",
        "/open-apis/relative",
        "https://open.feishu.cn:99999/",
        "",
    ],
)
def test_a_url_that_names_no_single_http_host_has_no_origin(url: str) -> None:
    assert origin(url) is None


def test_the_apps_own_origin_gets_the_token_and_no_other() -> None:
    hosts = Hosts.of("https://open.feishu.cn")

    assert hosts.allows("https://open.feishu.cn/open-apis/im/v1/chats")
    assert not hosts.allows("http://open.feishu.cn/open-apis/im/v1/chats")  # clear text
    assert not hosts.allows("https://open.feishu.cn:8443/")
    assert not hosts.allows("https://open.larksuite.com/")
    assert not hosts.allows("https://open.feishu.cn.evil.example/")


def test_listed_hosts_are_hosts_on_https_or_origins() -> None:
    hosts = Hosts.of(
        "https://open.feishu.cn",
        ["open.larksuite.com", "https://gw.example:8443", "http://[::1]:9"],
    )

    assert hosts.allows("https://open.larksuite.com/x") and hosts.allows("https://gw.example:8443")
    assert hosts.allows("http://[::1]:9/x") and hosts.allows("https://open.feishu.cn/")
    assert not hosts.allows("http://open.larksuite.com/x")
    assert not hosts.allows("https://gw.example/")


@pytest.mark.parametrize(
    "listed",
    [
        "open.larksuite.com",  # a string, not a sequence of hosts
        ["http://open.larksuite.com"],  # the token in clear text beyond this machine
        ["https://open.larksuite.com/open-apis"],
        ["https://user@open.larksuite.com"],
        ["https://open.larksuite.com?x=1"],
        [""],
        [443],
    ],
)
def test_a_listed_host_that_is_not_a_plain_origin_is_refused(listed: Any) -> None:
    with pytest.raises(ValueError, match="hosts"):
        Hosts.of("https://open.feishu.cn", listed)


def test_a_system_with_several_apps_needs_the_app_named_to_know_its_host(
    make_system: SystemFactory, app: actors.AppConfig, market_app: actors.AppConfig
) -> None:
    system = make_system([app, market_app])

    with pytest.raises(ValueError, match="app_id is required"):
        actors.FeishuAuth(system)
    with pytest.raises(ValueError, match="unknown app_id"):
        actors.FeishuAuth(system, app_id="cli_nobody")


def test_arguments_a_get_would_refuse_are_refused_when_the_auth_is_made(
    make_system: SystemFactory, app: actors.AppConfig, market_app: actors.AppConfig
) -> None:
    system = make_system([app, market_app])

    with pytest.raises(ValueError, match="tenant_key is required"):
        actors.FeishuAuth(system, app_id=MARKET_ID)
    with pytest.raises(ValueError, match="tenant_key is not accepted"):
        actors.FeishuAuth(system, tenant_key="tk-1", app_id=APP_ID)
    with pytest.raises(ValueError, match="kind must be"):
        actors.FeishuAuth(system, cast("Any", "nonsense"), app_id=APP_ID)
    with pytest.raises(ValueError, match="user= is only accepted"):
        actors.AsyncFeishuAuth(system, user="ou_alice", app_id=APP_ID)


# --- what a resend may send ----------------------------------------------------------------------


def test_a_body_held_in_memory_can_always_be_sent_again() -> None:
    for body in (None, b"x", bytearray(b"x"), memoryview(b"x"), "x"):
        assert body_start(body) is None and rewind(body, None)


def test_a_seekable_file_is_put_back_where_it_started() -> None:
    body = offset(b"payload")
    start = body_start(body)
    body.read()

    assert start == len(b"skipped") and rewind(body, start) and body.read() == b"payload"


@pytest.mark.parametrize(
    "make",
    [lambda: iter([b"x"]), lambda: (b for b in [b"x"]), lambda: pipe(b"x"), lambda: OneWay(b"x")],
    ids=["iterator", "generator", "pipe", "one-way-file"],
)
def test_a_body_read_once_cannot_be_sent_again(make: Callable[[], object]) -> None:
    body = make()

    assert not rewind(body, body_start(body))


# --- which answers are judged --------------------------------------------------------------------


def test_the_code_of_an_answer_is_read_only_from_a_short_json_object() -> None:
    short = json.dumps({"code": 99991663, "msg": "x"}).encode()
    padded = json.dumps({"code": 99991663, "msg": "x" * CODE_PREFIX}).encode()

    assert code_of(short) == 99991663
    assert code_of(padded) is None  # no invalid-token answer is that long
    assert code_of(b"[" * 50_000 + b"]" * 50_000) is None  # nesting past the parser's depth
    assert code_of(b"<html>502</html>") is None and code_of(b"") is None


def test_the_code_is_read_from_a_json_object_only() -> None:
    assert response_code({"code": 99991663, "msg": "x"}) == 99991663
    assert response_code([{"code": 99991663}]) is None
    assert response_code("99991663") is None


def test_a_bearer_header_round_trips_its_token() -> None:
    assert bearer("t-abc") == "Bearer t-abc"
    assert bearer_of(bearer("t-abc")) == "t-abc"
    assert [bearer_of(h) for h in (None, "", "Bearer ", "Basic dXNlcg==")] == [None] * 4


def test_only_a_json_content_type_can_carry_a_code() -> None:
    assert is_json("application/JSON; charset=utf-8") and is_json("application/problem+json")
    assert not is_json("text/html") and not is_json(None)


# --- the two drivers -----------------------------------------------------------------------------


class StubProxy:
    """The part of a TokenProxy a target uses: hands out t-1, t-2, ... and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self._tokens: Iterator[str] = (f"t-{n}" for n in range(1, 10))

    def get_token(
        self,
        kind: actors.TokenKind,
        *,
        tenant_key: str | None,
        app_id: str | None,
        user: str | None,
    ) -> pykka.Future[str]:
        self.calls.append(("get", kind, tenant_key, app_id, user))
        return resolved(next(self._tokens))

    async def aget_token(
        self,
        kind: actors.TokenKind,
        *,
        tenant_key: str | None,
        app_id: str | None,
        user: str | None,
    ) -> str:
        return self.get_token(kind, tenant_key=tenant_key, app_id=app_id, user=user).get()

    def invalidate(self, token: str) -> pykka.Future[bool]:
        self.calls.append(("invalidate", token))
        return resolved(True)

    async def ainvalidate(self, token: str) -> bool:
        return self.invalidate(token).get()


def resolved(value: Any) -> pykka.Future[Any]:
    future: pykka.Future[Any] = pykka.ThreadingFuture()
    future.set(value)
    return future


@pytest.mark.parametrize(
    ("kind", "tenant_key", "user", "code"),
    [
        (actors.TokenKind.APP, "tk-1", None, 99991664),
        (actors.TokenKind.USER, None, "ou_alice", 99991677),
    ],
    ids=["app", "user"],
)
@pytest.mark.parametrize("driver", ["blocking", "awaited"])
def test_both_drivers_get_and_invalidate_the_targets_token_the_same_way(
    driver: str, kind: actors.TokenKind, tenant_key: str | None, user: str | None, code: int
) -> None:
    proxy = StubProxy()
    target = TokenTarget(
        cast("Any", proxy),
        kind,
        tenant_key=tenant_key,
        app_id="cli_x",
        timeout=1,
        hosts=OWN_HOSTS,
        user=user,
    )
    codes, sent, rewound = iter([code, 0]), [], []

    def send(token: str | None) -> object:
        sent.append(token)
        return next(codes)

    async def asend(token: str | None) -> object:
        return send(token)

    async def aread(answer: object) -> object:
        return answer

    def rewind_body() -> bool:
        rewound.append(True)
        return True

    common: dict[str, Any] = {"url": OWN + "/x", "answered_from": lambda _: OWN}
    common["rewind"] = rewind_body
    if driver == "blocking":
        final = run(target.flow(send=send, read_code=lambda answer: answer, **common))
    else:
        aflow = target.aflow(send=asend, read_code=aread, **common)
        final = asyncio.run(arun(aflow))

    assert final == 0 and sent == ["t-1", "t-2"] and rewound == [True]
    get = ("get", kind, tenant_key, "cli_x", user)
    assert proxy.calls == [get, ("invalidate", "t-1"), get]


# --- one interface over the client kinds ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request: to the fake's ``path``, or to ``url`` (another host's) when given."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    url: str | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)


class Caller(Protocol):
    # What a token wait past the auth's ``timeout`` raises: pykka.Timeout blocking, TimeoutError
    # awaited.
    timeout_error: type[Exception]

    def send(self, call: Call) -> Answer: ...

    def send_together(self, calls: list[Call]) -> list[Answer]:
        """Send ``calls`` concurrently; the answers in the same order."""
        ...


class BlockingCaller:
    """A client whose sends block: sent together from threads, one each."""

    timeout_error: type[Exception] = pykka.Timeout

    def send(self, call: Call) -> Answer:
        raise NotImplementedError

    def send_together(self, calls: list[Call]) -> list[Answer]:
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(self.send, calls))


MakeCaller = Callable[..., Caller]
"""``make_caller(system, kind=..., tenant_key=..., timeout=..., hosts=...)``: a client that follows
redirects, whose auth takes its tokens from ``system``, closed after the test."""


def business(server: FakeFeishu) -> list[RecordedRequest]:
    return [r for r in server.requests if r.kind == "business"]


def tokens_sent(server: FakeFeishu) -> list[str | None]:
    return [r.token for r in business(server)]


def warm(system: actors.TokenSystem, kind: actors.TokenKind = actors.TokenKind.TENANT) -> str:
    return system.proxy.get_token(kind).get(timeout=TIMEOUT)


LIST_CHATS = Call("GET", CHATS)
SEND_TEXT = Call(
    "POST",
    MESSAGES,
    json={"receive_id": "oc_1", "msg_type": "text", "content": '{"text":"hello"}'},
    params={"receive_id_type": "chat_id"},
)


# --- hosts of our own: a recording front for the fake, and foreign hosts -------------------------


@dataclass(frozen=True)
class Canned:
    """An answer a :class:`Host` gives once: ``body`` is bytes, or chunks made while they are
    sent (a big body never held whole), sent chunked unless ``headers`` give a length."""

    status: int = 200
    body: bytes | Callable[[], Iterable[bytes]] = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def code(cls, code: int, status: int = 200, **headers: str) -> Canned:
        body = json.dumps({"code": code, "msg": "canned"}).encode()
        return cls(status, body, headers=tuple(headers.items()))


def pipe(data: bytes) -> BinaryIO:
    """A file whose position cannot be restored: what is read from a pipe is gone."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(data)  # a pipe's buffer holds far more than a message
    return os.fdopen(read_end, "rb")


class OneWay(io.RawIOBase):
    """A file read once, front to back: it can neither tell nor seek (a socket, a decompressor)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def offset(data: bytes) -> BinaryIO:
    """A seekable file whose body, ``data``, starts past its beginning."""
    body = io.BytesIO(b"skipped" + data)
    body.seek(len(b"skipped"))
    return body


def chunked(canned: Canned) -> Canned:
    """``canned`` sent chunked, with no ``Content-Length`` to tell its size before its end."""
    body = canned.body
    assert isinstance(body, bytes)
    return dataclasses.replace(canned, body=lambda: [body[:1000], body[1000:]])


def gzipped(canned: Canned) -> Canned:
    """``canned`` sent compressed, as a gateway may send it."""
    assert isinstance(canned.body, bytes)
    encoding = (("Content-Encoding", "gzip"),)
    return dataclasses.replace(canned, body=gzip.compress(canned.body), headers=encoding)


@dataclass(frozen=True)
class Seen:
    """A request as a :class:`Host` got it: its body whole, however it was framed."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class Host:
    """A real loopback HTTP server standing for one host (``127.0.0.2`` is another host than
    the fake's ``127.0.0.1``). It records every request with its whole body (by
    ``Content-Length`` or chunked: the fake reads only the first), answers a path from its
    script while it has answers for it, and otherwise passes the request on to ``upstream``
    (a FakeFeishu, so this host can be an app's ``base_url``) or answers 404."""

    def __init__(self, address: str = "127.0.0.2", *, upstream: str | None = None) -> None:
        self._upstream = upstream
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._script: dict[str, list[Canned]] = {}
        self._httpd = ThreadingHTTPServer((address, 0), _HostHandler)
        self._httpd.daemon_threads = True
        self._httpd.host = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, path: str, *answers: Canned) -> None:
        with self._lock:
            self._script.setdefault(path, []).extend(answers)

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path.partition("?")[0] == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=TIMEOUT)

    def _record(self, seen: Seen) -> Canned | None:
        with self._lock:
            self._seen.append(seen)
            script = self._script.get(seen.path.partition("?")[0])
            return script.pop(0) if script else None

    def _forward(self, seen: Seen) -> Canned:
        if self._upstream is None:
            return Canned(404, b"not found", "text/plain")
        headers = {k: v for k, v in seen.headers.items() if k not in _HOP_BY_HOP}
        with requests.Session() as session:
            session.trust_env = False
            response = session.request(
                seen.method,
                self._upstream + seen.path,
                data=seen.body,
                headers=headers,
                allow_redirects=False,
                timeout=TIMEOUT,
            )
        passed = tuple(
            (k, v) for k, v in response.headers.items() if k.lower() in ("location", "retry-after")
        )
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return Canned(response.status_code, response.content, content_type, passed)


_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "host"})


class _HostHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2.0  # a body announced and never sent ends the read instead of hanging the host

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        host = cast("Host", self.server.host)  # type: ignore[attr-defined]
        try:
            body = self._body()
        except (OSError, ValueError):
            body, self.close_connection = b"<cut>", True
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        canned = host._record(seen) or host._forward(seen)
        self.send_response(canned.status)
        self.send_header("Content-Type", canned.content_type)
        for name, value in canned.headers:
            self.send_header(name, value)
        if isinstance(canned.body, bytes):
            self.send_header("Content-Length", str(len(canned.body)))
            self.end_headers()
            self.wfile.write(canned.body)
            return
        framed = not any(name.lower() == "content-length" for name, _ in canned.headers)
        if framed:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()  # the head goes out before the body is made
        for chunk in canned.body():
            self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if framed else chunk)
        if framed:
            self.wfile.write(b"0\r\n\r\n")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()  # the empty trailer
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
        return body

    def log_message(self, format: str, *args: object) -> None:
        return


class WithHosts:
    """Fixtures of the hosts around the fake, for test classes (a client's module inherits them)."""

    @pytest.fixture
    def foreign(self) -> Iterator[Host]:
        """Another host (``127.0.0.2``): no token of ours may ever reach it."""
        host = Host("127.0.0.2")
        yield host
        host.close()

    @pytest.fixture
    def front(self, server: FakeFeishu) -> Iterator[Host]:
        """The app's own host (``front_app``'s), recording whole bodies, in front of the fake."""
        host = Host("127.0.0.1", upstream=server.base_url)
        yield host
        host.close()

    @pytest.fixture
    def front_app(self, front: Host) -> actors.AppConfig:
        return actors.AppConfig(APP_ID, SECRET, base_url=front.url)


def sent_once_opened(body: bytes) -> tuple[Canned, threading.Event]:
    """A long JSON answer with a ``Content-Length`` whose body is sent only once the caller has
    the answer in hand (set the event); if the caller is not given the answer before its body
    arrives, a body of the same length but other bytes is sent, 5 s later."""
    opened = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield body if opened.wait(timeout=5) else b"-" * len(body)

    length = (("Content-Length", str(len(body))),)
    return Canned(200, chunks, "application/json", headers=length), opened


LONG_JSON = json.dumps({"code": 0, "data": "x" * 100_000}).encode()
NDJSON_BYTES = 200 * 2**20  # a streamed export: far more than any prefix read to see a code
NDJSON_LINE = b'{"code":0,"row":"' + b"x" * 1000 + b'"}\n'


def ndjson() -> Iterator[bytes]:
    """NDJSON_BYTES of JSON lines, made as they are sent, 64 lines a chunk."""
    chunk = NDJSON_LINE * 64
    for _ in range(NDJSON_BYTES // len(chunk)):
        yield chunk


# What reading the whole body at once would add: a bound well below it, well above the chunks.
MEMORY_BOUND = 16 * 2**20


@functools.cache
def ndjson_received() -> tuple[int, str]:
    """The size and digest of the whole :func:`ndjson` body, as a caller must receive it."""
    return chunks_received(ndjson())


def chunks_received(chunks: Iterable[bytes]) -> tuple[int, str]:
    """The size and sha256 of a body read in chunks, never holding it whole."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def achunks_received(chunks: AsyncIterable[bytes]) -> tuple[int, str]:
    """:func:`chunks_received` for chunks that are awaited."""
    digest, size = hashlib.sha256(), 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class Peak:
    """The most memory a ``with peak_memory()`` block held at once, set when the block ends."""

    def __init__(self) -> None:
        self.bytes = 0


@contextlib.contextmanager
def peak_memory() -> Iterator[Peak]:
    """Trace every thread's allocations over the block (Python's own: bytes read from a socket
    are): the peak of what was held at once, above what was held when it began."""
    peak = Peak()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield peak
        peak.bytes = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


# --- user tokens: a fake with users on a clock of its own ---------------------------------------


class WithUsers:
    """Fixtures for user tokens, for test classes (a client's module inherits them): a fake
    Feishu with the users ``ou_alice`` and ``ou_bob`` on a clock of its own, ``feishu_clock``
    (advanced, it expires tokens on the server while the system, on the suite's clock, still
    holds them, as a token can expire early upstream), and a system on it with both logged in."""

    @pytest.fixture
    def feishu_clock(self) -> actors.ManualClock:
        return actors.ManualClock(start=1_000.0)

    @pytest.fixture
    def user_server(self, feishu_clock: actors.ManualClock) -> Iterator[FakeFeishu]:
        with FakeFeishu(clock=feishu_clock) as fake:
            fake.add_app(APP_ID, SECRET)
            fake.oauth.add_user("ou_alice", name="Alice")
            fake.oauth.add_user("ou_bob", name="Bob")
            yield fake

    @pytest.fixture
    def user_system(
        self, make_system: SystemFactory, user_server: FakeFeishu
    ) -> actors.TokenSystem:
        system = make_system(actors.AppConfig(APP_ID, SECRET, base_url=user_server.base_url))
        for user in ("ou_alice", "ou_bob"):
            login(system, user_server, user)
        user_server.reset_stats()  # a login's user_info call is not one of the test's
        return system


def user_token(system: actors.TokenSystem, user: str = "ou_alice") -> str:
    return system.proxy.get_token(USER, user=user).get(timeout=TIMEOUT)


def calendars(server: FakeFeishu) -> Call:
    """The user's calendars, on ``server`` (a user route)."""
    return Call("GET", CALENDARS, url=server.base_url + CALENDARS)


def refuse(server: FakeFeishu, clock: actors.ManualClock, token: str, how: str) -> int:
    """Make ``server`` refuse the user ``token``: forgotten (``"invalid"``, as after a restart of
    Feishu's token store) or expired (``"expired"``); the code it now answers the token with,
    as a request of this test's own (before the test starts counting) shows."""
    if how == "invalid":
        server.rotate(APP_ID)
    else:
        expires_at = server.expires_at(token)
        assert expires_at is not None
        clock.advance(expires_at - clock.now() + 1)
    with requests.Session() as session:
        session.trust_env = False
        headers = {"Authorization": bearer(token)}
        code = session.get(server.base_url + CALENDARS, headers=headers, timeout=TIMEOUT).json()
    server.reset_stats()
    return cast("int", code["code"])


# How the fake refuses a user token, and the code it answers it with then.
REFUSALS = [("invalid", 99991668), ("expired", 99991677)]

# Every token the fake issues: access (u-, t-, a-) and refresh (ur-) tokens alike.
FAKE_TOKEN = re.compile(r"\b(?:u|ur|t|a)-[0-9a-f]{32}\b")


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=1)
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))


@contextlib.contextmanager
def log_lines() -> Iterator[list[str]]:
    """Every log line written in the block: the library's (loguru, from TRACE, with their extra
    fields) and the standard library's (urllib3, httpx, the SDK's ``Lark``), at every level."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="TRACE")
    handler = _Lines(lines)
    loggers = [logging.getLogger(), logging.getLogger("Lark")]
    levels = [each.level for each in loggers]
    logging.getLogger().addHandler(handler)
    for each in loggers:
        each.setLevel(1)
    logger.enable("actors")
    try:
        yield lines
    finally:
        logger.disable("actors")
        logger.remove(sink)
        logging.getLogger().removeHandler(handler)
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


class TestUserAuths(WithUsers):
    def test_an_auth_that_sent_a_users_token_holds_none_in_its_repr(
        self, user_system: actors.TokenSystem, user_server: FakeFeishu
    ) -> None:
        blocking = actors.FeishuAuth(user_system, USER, user="ou_alice")
        awaited = actors.AsyncFeishuAuth(user_system, USER, user="ou_alice")
        url = user_server.base_url + CALENDARS
        with requests.Session() as session:
            session.trust_env = False
            assert session.get(url, auth=blocking, timeout=TIMEOUT).json()["code"] == 0
        with httpx.Client(auth=awaited, trust_env=False, timeout=TIMEOUT) as client:
            assert client.get(url).json()["code"] == 0

        assert tokens_sent(user_server) == [user_token(user_system)] * 2
        for auth in (blocking, awaited):
            assert not FAKE_TOKEN.search(f"{auth!r} {vars(auth)!r}")


# --- the contract --------------------------------------------------------------------------------


class InvalidTokenContract(WithHosts, WithUsers):
    @pytest.fixture
    def system(self, make_system: SystemFactory, app: actors.AppConfig) -> actors.TokenSystem:
        return make_system(app)

    def test_the_bearer_header_carries_the_systems_token(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 200 and answer.body["code"] == 0
        [call] = business(server)
        token = warm(system)
        assert call.token == token and call.header("authorization") == f"Bearer {token}"

    @pytest.mark.parametrize("status", [200, 400])
    @pytest.mark.parametrize("code", sorted(actors.TOKEN_INVALID_CODES))
    def test_an_invalid_token_code_invalidates_the_token_sent_and_resends_once_with_a_fresh_one(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        code: int,
        status: int,
    ) -> None:
        stale = warm(system)
        server.rotate()  # revoked upstream: the refetch after the invalidation gets a new token
        server.script("business", Reply.code(code, "token invalid", status=status))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 200 and answer.body["code"] == 0
        fresh = warm(system)
        assert fresh != stale and server.valid_token(fresh)
        assert tokens_sent(server) == [stale, fresh]  # the resend carried the fresh token
        assert system.metrics().invalidations == 1

    @pytest.mark.parametrize("status", [200, 400])
    @pytest.mark.parametrize(
        "case",
        [
            (actors.TokenKind.TENANT, LIST_CHATS),
            (
                actors.TokenKind.APP,
                Call("POST", USER_TOKEN, json={"grant_type": "authorization_code", "code": "c-1"}),
            ),
        ],
        ids=["tenant-route-99991663", "app-route-99991664"],
    )
    def test_a_token_the_server_revoked_is_recovered_from_as_feishu_answers_it(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        case: tuple[actors.TokenKind, Call],
        status: int,
    ) -> None:
        kind, call = case
        server.business.set_invalid_status(status)
        stale = warm(system, kind)
        server.rotate()

        answer = make_caller(system, kind=kind).send(call)

        assert answer.status == 200 and answer.body["code"] == 0
        first, retry = business(server)
        assert first.token == stale and retry.token == warm(system, kind) != stale
        assert (first.kind, retry.kind) == ("business", "business")
        assert server.count(kind.value) == 2  # the first fetch and the one after the invalidation

    def test_an_invalid_token_twice_in_a_row_returns_the_second_answer_without_a_loop(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        server.script(
            "business",
            Reply.code(99991663, "first", status=400),
            Reply.code(99991663, "second", status=400),
        )

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 400
        assert answer.body == {"code": 99991663, "msg": "second"}
        assert len(business(server)) == 2

    @pytest.mark.parametrize("code", [99991672, 99991679, 99991661, 99991400, 1254002])
    def test_other_codes_come_back_untouched_after_one_request(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu, code: int
    ) -> None:
        server.script("business", Reply.code(code, "not a token problem", status=400))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 400 and answer.body["code"] == code
        assert len(business(server)) == 1
        assert server.count("tenant") == 1 and system.metrics().invalidations == 0

    def test_a_non_json_answer_is_returned_untouched_and_not_retried(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        server.script("business", Reply.http(502))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 502 and "502 Bad Gateway" in answer.text
        assert len(business(server)) == 1 and system.metrics().invalidations == 0

    def test_a_post_is_resent_with_the_same_json_body(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        stale = warm(system)
        server.rotate()

        answer = make_caller(system).send(SEND_TEXT)

        assert answer.status == 200 and answer.body["code"] == 0
        assert answer.body["data"]["body"]["content"] == '{"text":"hello"}'
        first, retry = business(server)
        assert first.token == stale != retry.token
        assert json.loads(first.body) == json.loads(retry.body) == SEND_TEXT.json
        assert first.query == retry.query == "receive_id_type=chat_id"

    def test_two_requests_failing_with_the_same_stale_token_cause_one_invalidation(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        stale = warm(system)
        caller = make_caller(system)
        gate = server.hold("business")
        with ThreadPoolExecutor(1) as pool:
            both = pool.submit(caller.send_together, [LIST_CHATS, LIST_CHATS])
            assert gate.wait_for_waiting(
                2, timeout=TIMEOUT
            )  # both sent the token, neither answered
            server.rotate()  # ... and now it is revoked: both get 99991663
            gate.release()
            answers = both.result(timeout=TIMEOUT)

        assert [a.body["code"] for a in answers] == [0, 0]
        fresh = warm(system)
        assert tokens_sent(server) == [stale, stale, fresh, fresh]
        # Compare-and-invalidate: the second invalidation of the stale token was a no-op.
        assert system.metrics().invalidations == 1
        assert server.count("tenant") == 2

    def test_a_marketplace_tenants_token_is_sent_for_that_tenant(
        self,
        make_caller: MakeCaller,
        make_system: SystemFactory,
        market_app: actors.AppConfig,
        server: FakeFeishu,
    ) -> None:
        system = make_system(market_app)
        forward_tickets(server, system)

        answer = make_caller(system, tenant_key="tk-7").send(LIST_CHATS)

        assert answer.body["data"]["items"][0]["tenant_key"] == "tk-7"
        [call] = business(server)
        assert (call.app_id, call.tenant_key) == (MARKET_ID, "tk-7")

    def test_a_token_not_given_within_the_timeout_fails_the_request_before_it_is_sent(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        gate = server.hold("tenant")  # the token fetch hangs
        caller = make_caller(system, timeout=0.05)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(caller.send, LIST_CHATS)
            # A bound, not a measurement: an auth without a timeout would wait for the gate.
            finished, _ = wait([sending], timeout=TIMEOUT)
            gate.release()

        assert finished, "the auth kept waiting for the token past its timeout"
        with pytest.raises(caller.timeout_error):
            sending.result()
        assert business(server) == []

    # --- the token goes to the app's own host only

    def test_a_request_to_another_host_goes_without_the_token_and_fetches_none(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        foreign: Host,
    ) -> None:
        foreign.answer("/x", Canned.code(99991663))

        answer = make_caller(system).send(Call("GET", "/x", url=foreign.url + "/x"))

        assert answer.body["code"] == 99991663  # another host's answer, returned untouched
        assert [s.authorization for s in foreign.seen()] == [None]
        assert server.count("tenant") == 0 and system.metrics().invalidations == 0

    def test_the_callers_own_authorization_to_another_host_is_left_alone(
        self, make_caller: MakeCaller, system: actors.TokenSystem, foreign: Host
    ) -> None:
        basic = {"Authorization": "Basic dXNlcjpwdw=="}

        make_caller(system).send(Call("GET", "/x", headers=basic, url=foreign.url + "/x"))

        assert [s.authorization for s in foreign.seen()] == [basic["Authorization"]]

    def test_a_redirect_to_another_host_that_answers_token_invalid_gets_no_token_and_no_say(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        foreign: Host,
    ) -> None:
        server.script("business", Reply.http(302, "", headers={"Location": foreign.url + "/x"}))
        foreign.answer("/x", Canned.code(99991663), Canned.code(99991663))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.body["code"] == 99991663  # the last answer of the chain, untouched
        assert [s.authorization for s in foreign.seen()] == [None]
        assert system.metrics().invalidations == 0 and server.count("tenant") == 1
        assert tokens_sent(server) == [warm(system)]

    def test_hosts_the_caller_lists_get_the_token_as_the_apps_own_does(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        foreign: Host,
    ) -> None:
        caller = make_caller(system, hosts=(foreign.url,))

        caller.send(Call("GET", "/x", url=foreign.url + "/x"))
        caller.send(LIST_CHATS)

        token = warm(system)
        assert [s.authorization for s in foreign.seen()] == [f"Bearer {token}"]
        assert tokens_sent(server) == [token]

    # --- a user's token

    def test_a_users_token_is_sent_for_that_user(
        self, make_caller: MakeCaller, user_system: actors.TokenSystem, user_server: FakeFeishu
    ) -> None:
        answers = [
            make_caller(user_system, kind=USER, user=user).send(calendars(user_server))
            for user in ("ou_alice", "ou_bob")
        ]

        summaries = [a.body["data"]["calendar_list"][0]["summary"] for a in answers]
        assert summaries == ["Alice", "Bob"]
        assert tokens_sent(user_server) == [
            user_token(user_system, u) for u in ("ou_alice", "ou_bob")
        ]
        assert user_server.oauth.rotations() == 0

    @pytest.mark.parametrize(
        "refusal",
        [(how, code, status) for how, code in REFUSALS for status in (200, 400)],
        ids=[f"{how}-{code}-http{status}" for how, code in REFUSALS for status in (200, 400)],
    )
    def test_a_user_token_the_server_refuses_is_rotated_once_and_the_request_sent_again(
        self,
        make_caller: MakeCaller,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        feishu_clock: actors.ManualClock,
        refusal: tuple[str, int, int],
    ) -> None:
        how, code, status = refusal
        user_server.business.set_invalid_status(status)
        stale = user_token(user_system)
        assert refuse(user_server, feishu_clock, stale, how) == code

        answer = make_caller(user_system, kind=USER, user="ou_alice").send(calendars(user_server))

        assert answer.status == 200 and answer.body["code"] == 0
        fresh = user_token(user_system)
        assert fresh != stale and tokens_sent(user_server) == [stale, fresh]
        assert user_server.oauth.rotations("ou_alice") == user_server.oauth.rotations() == 1
        assert user_server.oauth.refresh_reuses == 0

    def test_a_users_new_token_refused_too_is_returned_without_a_second_rotation(
        self, make_caller: MakeCaller, user_system: actors.TokenSystem, user_server: FakeFeishu
    ) -> None:
        stale = user_token(user_system)
        user_server.script(
            "business",
            Reply.code(99991668, "first", status=400),
            Reply.code(99991677, "second", status=400),
        )

        answer = make_caller(user_system, kind=USER, user="ou_alice").send(calendars(user_server))

        assert answer.status == 400 and answer.body == {"code": 99991677, "msg": "second"}
        fresh = user_token(user_system)
        assert tokens_sent(user_server) == [stale, fresh] and fresh != stale
        assert user_server.oauth.rotations("ou_alice") == 1

    def test_two_requests_refused_with_the_same_users_token_cause_one_rotation(
        self,
        make_caller: MakeCaller,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        feishu_clock: actors.ManualClock,
    ) -> None:
        stale = user_token(user_system)
        caller = make_caller(user_system, kind=USER, user="ou_alice")
        gate = user_server.hold("business")
        with ThreadPoolExecutor(1) as pool:
            both = pool.submit(caller.send_together, [calendars(user_server)] * 2)
            # Both sent the token, neither answered ...
            assert gate.wait_for_waiting(2, timeout=TIMEOUT)
            expires_at = user_server.expires_at(stale)
            assert expires_at is not None
            feishu_clock.advance(expires_at - feishu_clock.now() + 1)  # ... both get 99991677
            gate.release()
            answers = both.result(timeout=TIMEOUT)

        assert [a.body["code"] for a in answers] == [0, 0]
        fresh = user_token(user_system)
        assert tokens_sent(user_server) == [stale, stale, fresh, fresh]
        # Compare-and-invalidate: the second invalidation of the stale token rotated nothing.
        assert user_server.oauth.rotations("ou_alice") == 1
        assert user_server.oauth.refresh_reuses == 0

    def test_a_user_who_withdrew_the_authorization_is_asked_to_authorize_again(
        self, make_caller: MakeCaller, user_system: actors.TokenSystem, user_server: FakeFeishu
    ) -> None:
        user_token(user_system)
        user_server.oauth.revoke("ou_alice")  # the token answers 99991668, the refresh 20064
        caller = make_caller(user_system, kind=USER, user="ou_alice")

        with pytest.raises(actors.ReauthorizationRequired) as raised:
            caller.send(calendars(user_server))

        assert (raised.value.reason, raised.value.user) == ("revoked", "ou_alice")
        assert len(business(user_server)) == 1  # refused once; nothing to send again with
        assert user_server.oauth.refresh_reuses == 0

    def test_a_user_the_system_holds_no_grant_for_is_refused_before_anything_is_sent(
        self, make_caller: MakeCaller, user_system: actors.TokenSystem, user_server: FakeFeishu
    ) -> None:
        caller = make_caller(user_system, kind=USER, user="ou_carol")

        with pytest.raises(actors.ReauthorizationRequired) as raised:
            caller.send(calendars(user_server))

        assert (raised.value.reason, raised.value.user) == ("unknown_user", "ou_carol")
        assert business(user_server) == []

    @pytest.mark.parametrize(
        "auth",
        [
            {"kind": USER},
            {"kind": USER, "user": ""},
            {"kind": USER, "user": "ou_alice", "tenant_key": "tk-1"},
            {"user": "ou_alice"},
            {"kind": actors.TokenKind.APP, "user": "ou_alice"},
        ],
        ids=["user-missing", "user-empty", "user-with-tenant", "tenant-with-user", "app-with-user"],
    )
    def test_user_is_required_for_a_user_token_and_refused_for_the_other_kinds(
        self,
        make_caller: MakeCaller,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        auth: dict[str, Any],
    ) -> None:
        before = len(user_server.requests)

        with pytest.raises(ValueError, match="user"):
            make_caller(user_system, **auth)

        assert len(user_server.requests) == before

    def test_no_token_of_a_user_reaches_a_log_line_or_an_error(
        self,
        make_caller: MakeCaller,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        feishu_clock: actors.ManualClock,
    ) -> None:
        stale = user_token(user_system)
        refuse(user_server, feishu_clock, stale, "expired")
        caller = make_caller(user_system, kind=USER, user="ou_alice")
        with log_lines() as lines:
            caller.send(calendars(user_server))  # refused, rotated, sent again
            user_server.oauth.revoke("ou_alice")
            with pytest.raises(actors.ReauthorizationRequired) as raised:
                caller.send(calendars(user_server))  # refused, the rotation refused

        assert len(tokens_sent(user_server)) == 3 and lines  # the TRACE lines were written
        said = [*lines, str(raised.value), repr(raised.value)]
        assert [line for line in said if FAKE_TOKEN.search(line)] == []
