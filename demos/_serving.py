"""What the demos' web apps share: an ``http.server`` served on a thread for one ``with`` block."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from typing import TypeVar

__all__ = ["serving"]

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
