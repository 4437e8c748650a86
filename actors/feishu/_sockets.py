"""Sockets that another thread can shut down: ``stop()`` all of them, a deadline one attempt's.

A worker blocked in an HTTP call cannot be interrupted from another thread, and closing a
``requests.Session`` only closes idle pooled connections. The adapter below records every socket
its connections create, before it connects, so shutting it down makes a blocked connect, TLS
handshake, write or read fail at once:

- :meth:`AbortableAdapter.abort` (called by ``TokenSystem.stop()``) shuts down all of them;
- an attempt made inside :func:`attempt_deadline` has the sockets it uses shut down by the
  adapter's watchdog thread once the deadline passes. Socket timeouts bound each read, not the
  whole answer: a server that drips its status line and headers a byte at a time never trips
  them, and only this ends such an attempt.

Name lookups are the one step no socket can end: ``getaddrinfo`` is a C call that another
thread cannot interrupt, and a resolver that does not answer (a dead name server, a hanging
NSS module) holds it for the system resolver's own timeouts, seconds per server. So the
adapter looks names up on threads of their own (``actors-resolve``; an IP literal needs no
lookup and no thread) and the attempt waits for the answer only until its deadline, or until
:meth:`AbortableAdapter.abort`, which wakes every waiter at once. Lookups of one name share one
thread, also with later attempts while it is still blocked, so a hanging resolver costs a thread
per name, not per attempt. **Given up:** such a thread cannot be ended. ``abort()`` (so
``stop()``) joins lookup threads for up to a second; one still blocked in the resolver after
that is left to end when the resolver answers (a WARNING names it). It holds a host name and no
socket, and its answer is dropped: nothing connects after ``stop()``. Every other thread of
ours has ended when ``stop()`` returns.

Used on the session a TokenSystem creates itself, for direct connections and for connections
to an http(s) proxy (``HTTPS_PROXY`` in the environment applies to that session too); a SOCKS
proxy's connections are urllib3's own and end within their timeouts. A session passed in by
the application is left as it is: its calls end within urllib3's timeouts, and the client
checks the deadline between the reads of a body (see ``actors.feishu._client``).

How it hooks into urllib3 (2.x; :func:`require_urllib3_2` refuses 1.x at import): the adapter's
pool manager picks, by scheme, pool classes whose ``ConnectionCls`` are small subclasses of
urllib3's ``HTTPConnection`` and ``HTTPSConnection``. They override ``connect`` and ``request``
(public) and one private method, ``_new_conn``, urllib3's "open the socket" step: it is the only
place where a socket exists before it connects, so the only place a hanging connect can be
recorded and shut down. Our ``_new_conn`` resolves and connects as urllib3's own does (the
constructor's ``host`` and the public ``port``, ``timeout``, ``source_address`` and
``socket_options``; urllib3's own exceptions for a failed lookup, a connect timeout and a refused
connect), with the socket recorded between its creation and its connect. Should a urllib3
release rename ``_new_conn`` or stop calling it, sockets are no longer recorded before they
connect: a hanging connect or TLS handshake then lasts until its connect timeout, even through
``stop()``; ``stop()`` still shuts down every socket a request has been sent on (``request``
records it) and the deadline still bounds the status line, headers and body.
tests/feishu/test_sockets.py pins this hook.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import urllib3.exceptions
from loguru import logger
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from actors._errors import detached

__all__ = [
    "AbortableAdapter",
    "Deadline",
    "attempt_deadline",
    "current_deadline",
    "require_urllib3_2",
]


def require_urllib3_2(version: str) -> None:
    """ImportError, saying what to install, unless ``version`` is urllib3 2 or later.

    ``requests`` still allows urllib3 1.26, which has neither the lookup error raised below nor
    the ``read1`` the client reads bodies with under the deadline (the deadline would silently
    not apply to the body).
    """
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 2:
        msg = (
            f"lark-token-actors needs urllib3>=2, found urllib3 {version}: pip install 'urllib3>=2'"
        )
        raise ImportError(msg)


require_urllib3_2(urllib3.__version__)  # type: ignore[attr-defined]  # not in its __all__


_local = threading.local()


class Deadline:
    """The overall deadline of one upstream attempt: connect, send, status line, headers, body."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._done = False
        self._watchdogs: list[_Watchdog] = []

    @property
    def passed(self) -> bool:
        """Whether the deadline has passed (a watchdog may have shut its sockets down)."""
        return self._fired or time.monotonic() >= self.at

    @property
    def done(self) -> bool:
        """The attempt ended: nothing is left to shut down."""
        return self._done

    def watch(self, sock: socket.socket, watchdog: _Watchdog) -> None:
        """Have ``watchdog`` shut ``sock`` down when the deadline passes."""
        with self._lock:
            if self._done:
                return
            fired = self._fired
            first = not fired and watchdog not in self._watchdogs
            if not fired:
                self._sockets.append(sock)
            if first:
                self._watchdogs.append(watchdog)
        # Outside the lock: the watchdog calls fire() under its own.
        if fired:
            _shutdown(sock)  # the deadline passed already: the attempt must not go on
        elif first:
            watchdog.add(self)

    def fire(self) -> None:
        """Called by a watchdog once the deadline has passed: shut the sockets down."""
        with self._lock:
            if self._done or self._fired:
                return
            self._fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def finish(self) -> None:
        # The watchdog is not woken: it drops a finished deadline when it comes due, and a
        # notify per attempt would only cost a context switch on every request.
        with self._lock:
            self._done = True
            self._sockets = []


def current_deadline() -> Deadline | None:
    """The deadline of the attempt running on this thread, if any."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return deadline


@contextmanager
def attempt_deadline(seconds: float) -> Iterator[Deadline]:
    """Run one upstream attempt on this thread under an overall deadline of ``seconds``.

    Sockets an :class:`AbortableAdapter` uses inside the block are shut down when it passes;
    with other adapters the caller checks :attr:`Deadline.passed` itself.
    """
    deadline = Deadline(seconds)
    outer = current_deadline()
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = outer
        deadline.finish()


class _Watchdog:
    """One thread, started on demand and gone when idle for ``linger`` seconds, that fires the
    deadlines it is given.

    The thread lingers because starting one costs more than the rest of a cold fetch's
    client-side work (``Thread.start`` waits for the new thread to run): a busy system keeps one
    thread, an idle one keeps none.
    """

    def __init__(self, name: str = "actors-watchdog", *, linger: float = 10.0) -> None:
        self._name = name
        self._linger = linger
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._running = False
        self._threads: list[threading.Thread] = []
        self._closed = False

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._running:
                self._cond.notify()
                return
            self._running = True
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            # Started under the lock, so close() never sees a thread it cannot join yet; the
            # new thread only needs the lock once start() has returned.
            thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
                if due is None:
                    self._running = False
                    return
            due.fire()  # outside the lock: fire() takes the deadline's own lock

    def _next_due(self) -> Deadline | None:
        """Wait (under the lock) for the next deadline to pass; None when idle or closed."""
        idle_until: float | None = None
        while not self._closed:
            while self._heap and self._heap[0][2].done:
                heapq.heappop(self._heap)
            if not self._heap:
                now = time.monotonic()
                if idle_until is None:
                    idle_until = now + self._linger
                if now >= idle_until:
                    return None
                self._cond.wait(idle_until - now)
                continue
            idle_until = None
            wait = self._heap[0][0] - time.monotonic()
            if wait <= 0:
                return heapq.heappop(self._heap)[2]
            self._cond.wait(wait)
        return None

    def close(self, timeout: float) -> None:
        """Stop watching; the thread has ended when this returns (unless ``timeout`` ran out)."""
        with self._cond:
            self._closed = True
            self._heap = []
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)


AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


class _Lookup:
    """One name lookup under way: its thread (not started yet), its answer once there is one."""

    __slots__ = ("answer", "done", "thread")

    def __init__(self, run: Callable[[_Lookup], None], name: str) -> None:
        self.done = threading.Event()
        self.answer: Sequence[AddrInfo] | BaseException | None = None
        self.thread = threading.Thread(target=run, args=(self,), name=name, daemon=True)


class _Resolver:
    """Name lookups on threads of their own, so that the thread that needs one waits for it
    only until its attempt's deadline, or until :meth:`close`.

    ``getaddrinfo`` is a C call no other thread can interrupt: a resolver that does not answer
    (a dead name server, a hanging NSS module) holds its caller for as long as the system
    resolver's own timeouts (``resolv.conf``'s ``timeout`` times ``attempts``, per server).
    Waiting for it on another thread bounds the attempt by its deadline instead. Concurrent
    lookups of one name share one thread, and a lookup that outlived the attempt that asked is
    joined by the next one for that name: a resolver that hangs costs one thread per name, not
    one per attempt.
    """

    def __init__(self, name: str = "actors-resolve") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._lookups: dict[tuple[str, int | None, int], _Lookup] = {}
        self._closed = False

    def resolve(
        self, host: str, port: int | None, family: int, until: float | None
    ) -> Sequence[AddrInfo]:
        """``getaddrinfo(host, port, family, SOCK_STREAM)``, waiting until ``time.monotonic()``
        reaches ``until`` at most: TimeoutError then, ConnectionAbortedError once :meth:`close`
        is called.
        """
        key = (host, port, family)
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the TokenSystem is stopping")
            lookup = self._lookups.get(key)
            # A lookup whose thread is gone without an answer (its thread was the parent's,
            # before a fork) is never answered: start another.
            if lookup is None or not lookup.thread.is_alive():
                lookup = self._lookups[key] = _Lookup(functools.partial(self._run, key), self._name)
                lookup.thread.start()  # under the lock: close() joins only started threads
        while not lookup.done.is_set():
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"the name lookup for {host} did not finish in time")
            lookup.done.wait(left)
        answer = lookup.answer
        if isinstance(answer, BaseException):
            raise detached(answer)  # each waiter its own copy: one raise sets its traceback
        assert answer is not None  # done is set only with an answer
        return answer

    def _run(self, key: tuple[str, int | None, int], lookup: _Lookup) -> None:
        host, port, family = key
        answer: Sequence[AddrInfo] | BaseException
        try:
            answer = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, or UnicodeError for a name IDNA cannot encode
            answer = detached(exc)
        with self._lock:
            if self._lookups.get(key) is lookup:
                del self._lookups[key]
            if lookup.answer is None:  # close() may have answered already
                lookup.answer = answer
        lookup.done.set()

    def close(self, timeout: float) -> list[str]:
        """Wake every waiter with ConnectionAbortedError and join the lookup threads for up to
        ``timeout`` seconds; returns the names still being looked up after that."""
        with self._lock:
            self._closed = True
            lookups, self._lookups = self._lookups, {}
            for lookup in lookups.values():
                if lookup.answer is None:
                    lookup.answer = ConnectionAbortedError("the TokenSystem is stopping")
        for lookup in lookups.values():
            lookup.done.set()
        deadline = time.monotonic() + timeout
        for lookup in lookups.values():
            lookup.thread.join(max(0.0, deadline - time.monotonic()))
        return [host for (host, _, _), lookup in lookups.items() if lookup.thread.is_alive()]


class AbortableAdapter(HTTPAdapter):
    """``requests`` adapter that can shut down every socket it opened (:meth:`abort`), and
    whose attempts end at their :func:`attempt_deadline`."""

    def __init__(self, *, watchdog_linger: float = 10.0, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._aborted = False
        self._watchdog = _Watchdog(linger=watchdog_linger)
        self._resolver = _Resolver()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        adapter = self

        class TrackedHTTP(HTTPConnection):
            def __init__(self, host: str, *args: Any, **kwargs: Any) -> None:
                super().__init__(host, *args, **kwargs)
                # The name to look up, as the pool gave it: ``host`` (public) drops the
                # trailing dot of an absolute name, which the lookup must keep.
                self.actors_lookup = host

            def _new_conn(self) -> socket.socket:
                return _new_conn(self, self.actors_lookup, adapter)

            def request(self, *args: Any, **kwargs: Any) -> None:
                adapter.track(self.sock)  # a kept-alive connection: this attempt's socket now
                super().request(*args, **kwargs)

        class TrackedHTTPS(HTTPSConnection):
            actors_handshake: socket.socket | None = None

            def __init__(self, host: str, *args: Any, **kwargs: Any) -> None:
                super().__init__(host, *args, **kwargs)
                self.actors_lookup = host

            def _new_conn(self) -> socket.socket:
                sock = _new_conn(self, self.actors_lookup, adapter)
                # The TLS handshake detaches ``sock`` into an SSLSocket that is not known until
                # connect() returns; a duplicate of the descriptor keeps the handshake abortable.
                try:
                    self.actors_handshake = sock.dup()
                    adapter.track(self.actors_handshake)
                except OSError as exc:
                    sock.close()
                    msg = f"Failed to establish a new connection: {exc}"
                    raise NewConnectionError(self, msg) from exc
                return sock

            def connect(self) -> None:
                try:
                    super().connect()
                finally:
                    if self.actors_handshake is not None:
                        self.actors_handshake.close()
                        self.actors_handshake = None
                adapter.track(self.sock)

            def request(self, *args: Any, **kwargs: Any) -> None:
                adapter.track(self.sock)
                super().request(*args, **kwargs)

        class TrackedHTTPPool(HTTPConnectionPool):
            ConnectionCls = TrackedHTTP

        class TrackedHTTPSPool(HTTPSConnectionPool):
            ConnectionCls = TrackedHTTPS

        self._tracked_pools = {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}
        self.poolmanager.pool_classes_by_scheme = self._tracked_pools

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """requests' manager for ``proxy`` (an ``HTTPS_PROXY`` from the environment too), its
        connections to an http(s) proxy tracked as direct ones are. A SOCKS proxy's have
        classes of their own: they end within their timeouts only."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = self._tracked_pools
        return manager

    def track(self, sock: socket.socket | None) -> None:
        """Record ``sock`` for :meth:`abort` and the current attempt's deadline; after abort()
        it is shut down at once and ConnectionAbortedError says why."""
        if sock is None:
            return
        with self._lock:
            aborted = self._aborted
            if not aborted:
                self._sockets.add(sock)
        if aborted:
            _shutdown(sock)
            raise ConnectionAbortedError("the TokenSystem is stopping")
        self.watch(sock)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down when the deadline of the attempt on this thread passes."""
        deadline = current_deadline()
        if sock is not None and deadline is not None:
            deadline.watch(sock, self._watchdog)

    def check_open(self) -> None:
        """ConnectionAbortedError once :meth:`abort` has been called, TimeoutError once the
        deadline of the attempt on this thread has passed."""
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("the TokenSystem is stopping")
        deadline = current_deadline()
        if deadline is not None and deadline.passed:
            raise TimeoutError("the attempt's deadline passed")

    def abort(self) -> None:
        """Shut down every socket: blocked connects, reads and writes fail at once."""
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)
        self._watchdog.close(timeout=1.0)
        blocked = self._resolver.close(timeout=1.0)
        if blocked:
            logger.warning(
                "name lookups still blocked in the system resolver after stop(): {}; their "
                "threads end when it answers (nothing is connected then)",
                blocked,
            )

    def resolve(self, host: str, port: int | None) -> Sequence[AddrInfo]:
        """The addresses of ``host`` as urllib3 would look them up, waited for until the
        deadline of the attempt on this thread at most, or until :meth:`abort`."""
        family = allowed_gai_family()
        if _is_ip_literal(host):  # answered from the string itself: nothing to wait for
            return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        deadline = current_deadline()
        return self._resolver.resolve(host, port, family, None if deadline is None else deadline.at)

    def release(self) -> None:
        """Close every socket now; only once no thread can still be using one (after the
        workers are joined): closing a descriptor another thread reads could hand that thread
        a reused descriptor. urllib3 closes pooled connections only when garbage-collected."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass


def _new_conn(conn: HTTPConnection, lookup: str, adapter: AbortableAdapter) -> socket.socket:
    """What urllib3's ``HTTPConnection._new_conn`` does (its exceptions and audit event), with
    the socket tracked before it connects."""
    try:
        sock = _create_connection(conn, lookup, adapter)
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        msg = f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        raise ConnectTimeoutError(conn, msg) from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    return sock


def _create_connection(
    conn: HTTPConnection, lookup: str, adapter: AbortableAdapter
) -> socket.socket:
    """``urllib3.util.connection.create_connection`` with the name looked up within the
    attempt's deadline (:meth:`AbortableAdapter.resolve`) and :meth:`AbortableAdapter.track`
    between creating the socket and connecting it: a connect that hangs (a full backlog, a
    black hole) can be aborted too."""
    error: OSError | None = None
    for family, kind, proto, _, address in adapter.resolve(lookup.strip("[]"), conn.port):
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if conn.timeout is None or isinstance(conn.timeout, int | float):
                sock.settimeout(conn.timeout)  # else urllib3's "default": the global default
            if conn.source_address:
                sock.bind(conn.source_address)
            adapter.track(sock)
            sock.connect(address)
            # abort() or the deadline may have shut the socket down just before the connect
            # began: a timed connect then returns at once as if connected, and the first send
            # would wait out the timeout for a handshake that is still under way.
            adapter.check_open()
        except OSError as exc:
            error = exc
            sock.close()
            continue
        return sock
    raise error if error is not None else OSError("getaddrinfo returned an empty list")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed, or not connected yet (a connect then fails at once)
        pass
