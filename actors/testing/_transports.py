"""The two ways requests reach a FakeFeishu: a real HTTP/1.1 server on loopback, and an
in-process ``requests`` adapter that skips the socket but not the server's request handling."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from actors.testing._replies import Exchange, render_body

__all__ = ["Handler", "InProcessAdapter", "LoopbackServer"]


class Handler(Protocol):
    """What a transport needs from the server behind it (a FakeFeishu): one answer per request."""

    def handle(self, path: str, raw: bytes) -> Exchange:
        """Answer a POST of ``raw`` to ``path``, blocking for any hold or latency."""
        ...


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
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-answer are routine here (timeouts, disconnect tests).
        return

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake idle keep-alive handlers (blocked reading the next request) with EOF, while
        still letting an answer in progress be written."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RD)


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
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            if exchange.close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        return


class InProcessAdapter(BaseAdapter):
    """Mount on a ``requests.Session`` to reach a FakeFeishu without a socket.

    The same recording, holds, latency, scripts and token rules apply; only the HTTP wire (about
    2 ms of CPU per request through ``requests`` and ``http.server`` in one process) is skipped.
    Long simulations use it. Timeouts are not enforced: there is no socket to time out.
    """

    def __init__(self, fake: Handler) -> None:
        super().__init__()
        self._fake = fake

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        exchange = self._fake.handle(request.path_url, raw)
        reply = exchange.reply
        if reply.drop:
            raise requests.ConnectionError("FakeFeishu dropped the connection", request=request)
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict({"Content-Type": reply.content_type})
        response.headers.update(dict(reply.headers))
        response._content = render_body(reply, exchange.kind)
        response.url = request.url or ""
        response.request = request
        response.encoding = "utf-8"
        _after(exchange)
        return response

    def close(self) -> None:
        return
