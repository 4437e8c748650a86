"""What the demos' web apps share: an ``http.server`` served on a thread for one ``with`` block,
and a request handler that answers whole bodies and logs nothing (each demo prints its story)."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TypeVar

__all__ = ["QuietHandler", "serving"]

S = TypeVar("S", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: S, *, name: str) -> Iterator[S]:
    """``server`` answering requests on a thread called ``name`` until the block ends; then it
    is shut down, its socket closed and its thread joined, so a demo ends with nothing left
    listening."""
    # A short poll keeps shutdown() prompt: serve_forever notices the request every interval.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(BaseHTTPRequestHandler):
    """A handler whose answers carry their length, and that writes no access log to stderr."""

    def send_body(
        self, status: int, data: bytes, content_type: str, *headers: tuple[str, str]
    ) -> None:
        """Answer ``status`` with ``data``; ``headers`` are sent after the content headers."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return
