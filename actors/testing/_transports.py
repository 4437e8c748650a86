"""The two ways requests reach a FakeFeishu: a real HTTP/1.1 server on loopback, and an
in-process ``requests`` adapter that skips the socket but not the server's request handling
(with :class:`InProcessSession`, a session that also skips ``requests``' request preparation).

The loopback server writes every reply itself (status line, headers, body), so it can also
write them wrong on purpose: byte by byte (:meth:`Reply.drip`) or cut off by a reset
(:meth:`Reply.reset_mid_body`).
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from actors.testing._replies import Exchange, Headers, Reply, render_body

__all__ = ["Handler", "InProcessAdapter", "InProcessSession", "LoopbackServer", "Served"]


class Handler(Protocol):
    """What a transport needs from the server behind it (a FakeFeishu): one answer per request."""

    def handle(
        self, path: str, raw: bytes, *, method: str = "POST", headers: Headers = ()
    ) -> Exchange:
        """Answer a request of ``raw`` to ``path``, blocking for any hold or latency."""
        ...


class Served(Handler, Protocol):
    """A started server: its handler and the URL it is reached at."""

    @property
    def base_url(self) -> str: ...


def _after(exchange: Exchange) -> None:
    if exchange.after is not None:
        # Off the answering thread: the callback may call back into the server, possibly over
        # the very keep-alive connection that thread serves.
        threading.Thread(target=exchange.after, name="FakeFeishu:resend", daemon=True).start()


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 would make the
    # kernel drop SYNs and add whole-second retransmit delays.
    request_queue_size = 512

    def __init__(self, fake: Handler) -> None:
        self.fake = fake
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self.accepted = 0  # connections since start: how well clients keep theirs alive
        self.closing = threading.Event()  # set when the server stops: dripping answers end
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-answer are routine here (timeouts, disconnect tests).
        return

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self.accepted += 1
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake idle keep-alive handlers (blocked reading the next request) with EOF, while
        still letting an answer in progress be written; dripping answers stop."""
        self.closing.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RD)

    def reset_on_close(self, conn: socket.socket) -> None:
        """Close ``conn`` with a reset (RST) instead of an orderly FIN once its handler ends."""
        with suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self._resets.add(conn)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            reset = request in self._resets
            self._resets.discard(request)
        if reset:  # no SHUT_WR first: that would send a FIN ahead of the reset
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one buffered flush with Nagle off, avoiding the ~40 ms
    # delayed-ACK stall that split small writes cause on keep-alive connections.
    disable_nagle_algorithm = True
    wbufsize = -1

    def _server(self) -> LoopbackServer:
        return cast(LoopbackServer, self.server)

    def setup(self) -> None:
        super().setup()
        self._server().track(self.connection, add=True)

    def finish(self) -> None:
        self._server().track(self.connection, add=False)
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        exchange = self._server().fake.handle(self.path, raw)
        self._write(exchange)
        _after(exchange)

    def _write(self, exchange: Exchange) -> None:
        reply = exchange.reply
        if reply.drop:
            self.close_connection = True
            return
        body = render_body(reply, exchange.kind)
        cut = reply.cut_after is not None
        # Written by hand rather than with send_response(): a dripping reply sends even the
        # status line byte by byte.
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        head += [f"Content-Type: {reply.content_type}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in reply.headers]
        if exchange.close or cut:
            head.append("Connection: close")
            self.close_connection = True
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if reply.cut_after is not None:
            body = body[: min(reply.cut_after, max(len(body) - 1, 0))]
            self._server().reset_on_close(self.connection)
        try:
            if reply.drip_interval > 0 and not reply.drip_head:
                self._send(raw_head, 0.0)
                self._send(body, reply.drip_interval)
            else:  # one flush when not dripping (see wbufsize above)
                self._send(raw_head + body, reply.drip_interval)
        except OSError:
            self.close_connection = True

    def _send(self, data: bytes, interval: float) -> None:
        if interval <= 0:
            self.wfile.write(data)
            self.wfile.flush()
            return
        closing = self._server().closing
        for i in range(len(data)):
            if i and closing.wait(interval):
                raise OSError("FakeFeishu stopped while dripping a reply")
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        return


class InProcessAdapter(BaseAdapter):
    """Mount on a ``requests.Session`` to reach a FakeFeishu without a socket.

    The same recording, holds, latency, scripts and token rules apply, to every method and with
    the request's headers (business routes, the authorize page); only the HTTP wire (about
    2 ms of CPU per request through ``requests`` and ``http.server`` in one process) is skipped.
    Long simulations use it. Timeouts are not enforced: there is no socket to time out, and a
    dripping reply arrives at once.
    """

    def __init__(self, fake: Handler) -> None:
        super().__init__()
        self._fake = fake

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        method, headers = request.method or "POST", tuple(request.headers.items())
        exchange = self._fake.handle(request.path_url, raw, method=method, headers=headers)
        reply = exchange.reply
        if reply.drop or reply.cut_after is not None:
            what = "dropped the connection" if reply.drop else "reset the connection mid-body"
            raise requests.ConnectionError(f"FakeFeishu {what}", request=request)
        data = render_body(reply, exchange.kind)
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict(_headers(reply, len(data)))
        # A stream like the one a socket gives, so streaming readers work here too.
        response.raw = _Body(data)
        response.url = request.url or ""
        response.request = request
        response.encoding = "utf-8"
        _after(exchange)
        return response

    def close(self) -> None:
        return


# The keyword arguments of a plain JSON POST, all InProcessSession's shortcut understands.
_PLAIN_POST = frozenset({"data", "json", "headers", "timeout", "stream"})


class InProcessSession(requests.Session):
    """A ``requests.Session`` wired to a started FakeFeishu without a socket.

    :class:`InProcessAdapter` is mounted on the server's base URL, and a plain JSON POST there
    (``post(url, json=..., headers=..., timeout=..., stream=...)``, what the token client sends)
    skips ``requests``' request preparation and goes straight to the adapter: merging session
    settings, cookies and hooks costs about 0.16 ms of CPU per request, ten times the server's
    own handling. Anything else takes the ordinary path through the mounted adapter. The
    environment (proxies, ``.netrc``) is never consulted.
    """

    def __init__(self, fake: Served) -> None:
        super().__init__()
        self.trust_env = False
        self._prefix = fake.base_url + "/"
        self._adapter = InProcessAdapter(fake)
        self.mount(fake.base_url, self._adapter)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        body = kwargs.get("json")
        if (
            args
            or method != "POST"
            or not isinstance(url, str)
            or not url.startswith(self._prefix)
            or body is None
            or kwargs.get("data") is not None
            or kwargs.keys() - _PLAIN_POST
        ):
            return super().request(method, url, *args, **kwargs)
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url = method, url
        prepared.headers = CaseInsensitiveDict(kwargs.get("headers") or {})
        prepared.body = json.dumps(body, allow_nan=False).encode()
        response = self._adapter.send(prepared)
        if not kwargs.get("stream"):
            response.content  # noqa: B018 - read now, as requests does without stream=True
        return response


class _Body:
    """An answer's bytes as ``requests`` reads a response stream: ``read``, ``read1`` and
    ``stream`` with urllib3's keywords (there is nothing to decode), at a fraction of the cost
    of a ``urllib3.HTTPResponse`` around a buffer."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return self._buffer.read(amt)

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return self._buffer.read1(-1 if amt is None else amt)

    def stream(self, amt: int = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
        while chunk := self._buffer.read(amt):
            yield chunk

    def close(self) -> None:
        self._buffer = io.BytesIO()  # reads after close return b"", as urllib3's do

    def release_conn(self) -> None:
        return


def _headers(reply: Reply, length: int) -> dict[str, str]:
    return {
        "Content-Type": reply.content_type,
        "Content-Length": str(length),
        **dict(reply.headers),
    }
