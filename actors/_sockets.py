"""An HTTPAdapter whose sockets ``stop()`` can shut down, so no worker outlives the system.

A worker blocked in an HTTP read cannot be interrupted from another thread, and closing a
``requests.Session`` only closes idle pooled connections. The adapter below records every socket
its connections open; shutting them down makes a blocked read return at once with an error,
which ends the worker's attempt. Used on the session a TokenSystem creates itself; a session
passed in by the application is left as it is (its calls still end within ``request_timeout``).
"""

from __future__ import annotations

import socket
import threading
import weakref
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["AbortableAdapter"]


class AbortableAdapter(HTTPAdapter):
    """``requests`` adapter that can shut down every socket it opened (:meth:`abort`)."""

    def __init__(self, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._aborted = False
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        track = self._track

        class TrackedHTTP(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                track(self.sock)

        class TrackedHTTPS(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                track(self.sock)

        class TrackedHTTPPool(HTTPConnectionPool):
            ConnectionCls = TrackedHTTP

        class TrackedHTTPSPool(HTTPSConnectionPool):
            ConnectionCls = TrackedHTTPS

        self.poolmanager.pool_classes_by_scheme = {
            "http": TrackedHTTPPool,
            "https": TrackedHTTPSPool,
        }

    def _track(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self._aborted:
                self._sockets.add(sock)
                return
        _shutdown(sock)  # opened after abort(): close it before it is used

    def abort(self) -> None:
        """Shut down every socket: blocked reads and writes fail at once."""
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass
