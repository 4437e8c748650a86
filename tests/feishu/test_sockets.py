"""The abortable adapter: stop() reaches sockets that are still connecting or in their TLS
handshake, and an attempt's deadline shuts its socket down; what it needs of urllib3."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import inspect
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import requests
import urllib3
from packaging.requirements import Requirement
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

import actors
from actors.feishu import _sockets
from actors.feishu._sockets import (
    AbortableAdapter,
    attempt_deadline,
    current_deadline,
    require_urllib3_2,
)
from actors.testing import FakeFeishu
from tests.conftest import APP_ID, SECRET, our_threads

Address = tuple[str, int]

# --- connects that hang, observed through the interpreter's audit events ----------------------

_connecting: dict[Address, threading.Event] = {}
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connecting:
        waiter = _connecting.get(args[1])
        if waiter is not None:
            waiter.set()


def connect_started(address: Address) -> threading.Event:
    """Set when any socket of this process starts connecting to ``address`` (the
    ``socket.connect`` audit event fires just before the connect call)."""
    global _hooked  # noqa: PLW0603  # audit hooks cannot be removed: install one, once
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    return _connecting.setdefault(address, threading.Event())


@pytest.fixture
def black_hole() -> Iterator[Address]:
    """A loopback address whose connects hang: a listener with a backlog of 0, its accept queue
    filled by connections nobody accepts, so the kernel drops new SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address: Address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        while True:
            probe = socket.socket()
            probe.settimeout(0.5)  # a probe, not a wait: a full queue never answers it
            try:
                probe.connect(address)
            except TimeoutError:
                probe.close()
                break
            fillers.append(probe)
            if len(fillers) > 64:
                pytest.skip("this kernel accepts connections beyond the listen backlog")
        yield address
    finally:
        _connecting.pop(address, None)
        for sock in fillers:
            sock.close()
        listener.close()


def in_thread(call: Any) -> Future[Any]:
    """Run ``call`` on a daemon thread (it may block long after a failed test)."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="test-caller", daemon=True).start()
    return future


def tracked_session() -> tuple[requests.Session, AbortableAdapter]:
    adapter = AbortableAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter


# --- abort() -------------------------------------------------------------------------------------


def test_abort_ends_a_connect_that_hangs(black_hole: Address) -> None:
    started = connect_started(black_hole)
    session, adapter = tracked_session()
    url = f"http://127.0.0.1:{black_hole[1]}/"
    call = in_thread(lambda: session.post(url, timeout=(10.0, 10.0)))
    assert started.wait(5)
    adapter.abort()
    # The connect would otherwise hang for its 10 s timeout.
    with pytest.raises(requests.ConnectionError):
        call.result(timeout=3)


def test_stop_aborts_a_fetch_whose_connect_hangs(black_hole: Address) -> None:
    before = set(our_threads())
    started = connect_started(black_hole)
    app = actors.AppConfig(APP_ID, SECRET, base_url=f"http://127.0.0.1:{black_hole[1]}")
    policy = actors.RefreshPolicy(request_timeout=(10.0, 10.0))
    system = actors.TokenSystem.start(app, policy=policy)
    pending = system.proxy.get_token()
    assert started.wait(5)
    stopping = time.monotonic()
    system.stop(timeout=5.0)
    assert time.monotonic() - stopping < 3.0  # wide margin: the connect would block 10 s
    assert not [t.name for t in threading.enumerate() if t.name.startswith("actors-fetch")]
    assert set(our_threads()) <= before
    with pytest.raises(actors.SystemStoppedError):
        pending.get(timeout=0)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_abort_ends_a_connect_to_a_proxy_that_hangs(black_hole: Address, scheme: str) -> None:
    # A proxy from the environment (HTTPS_PROXY) is used by the system's own session too.
    started = connect_started(black_hole)
    session, adapter = tracked_session()
    proxies = {scheme: f"http://127.0.0.1:{black_hole[1]}"}
    url = f"{scheme}://open.feishu.example/"
    call = in_thread(lambda: session.post(url, proxies=proxies, timeout=(10.0, 10.0)))
    assert started.wait(5)
    adapter.abort()
    with pytest.raises(requests.ConnectionError):
        call.result(timeout=3)


def test_abort_ends_a_tls_handshake_that_hangs() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)
        session, adapter = tracked_session()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/"
        call = in_thread(lambda: session.post(url, timeout=(10.0, 10.0), verify=False))
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(1)  # the ClientHello: the client now waits for an answer
            adapter.abort()
            with pytest.raises(requests.ConnectionError):
                call.result(timeout=3)


def test_a_connection_opened_after_abort_fails_at_once() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        session, adapter = tracked_session()
        adapter.abort()
        with pytest.raises(requests.ConnectionError, match="stopping"):
            session.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=(5, 5))


# --- deadlines -----------------------------------------------------------------------------------


def watchdogs() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "actors-watchdog"}


def test_the_watchdog_shuts_a_socket_down_when_its_deadline_passes() -> None:
    before = watchdogs()
    adapter = AbortableAdapter(watchdog_linger=0.0)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)  # only a safety net: the shutdown ends the read
        with attempt_deadline(0.2) as deadline:
            adapter.watch(left)
            ours = watchdogs() - before
            assert left.recv(1) == b""  # EOF: shut down by the watchdog, not timed out
            assert deadline.passed
    assert len(ours) == 1
    for thread in ours:  # nothing left to watch: the thread ends by itself
        thread.join(5)
        assert not thread.is_alive()


def test_consecutive_attempts_share_one_watchdog_thread_until_it_idles_out() -> None:
    before = watchdogs()
    adapter = AbortableAdapter(watchdog_linger=60.0)
    seen: set[threading.Thread] = set()
    for _ in range(3):
        left, right = socket.socketpair()
        with left, right, attempt_deadline(60.0):
            adapter.watch(left)
            seen |= watchdogs() - before
    assert len(seen) == 1  # one thread start for every attempt: it is the costly part
    (thread,) = seen
    assert thread.is_alive()  # lingering, not ended after each attempt
    adapter.abort()
    assert not thread.is_alive()


def test_a_socket_used_after_its_attempts_deadline_passed_is_shut_down_at_once() -> None:
    adapter = AbortableAdapter()
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        adapter.watch(left)  # outside any attempt: nothing happens
        right.send(b"x")
        assert left.recv(1) == b"x"
        with attempt_deadline(60.0) as deadline:
            deadline.fire()  # as the watchdog does when the deadline passes
            adapter.watch(left)
            assert left.recv(1) == b""


def test_attempt_deadlines_nest_and_are_per_thread() -> None:
    assert current_deadline() is None
    with attempt_deadline(5.0) as outer:
        elsewhere = in_thread(current_deadline)
        with attempt_deadline(1.0) as inner:
            assert current_deadline() is inner
        assert current_deadline() is outer
        assert elsewhere.result(timeout=5) is None
    assert current_deadline() is None
    assert outer.done and inner.done and not outer.passed


def test_abort_ends_the_watchdog_thread() -> None:
    before = watchdogs()
    adapter = AbortableAdapter()
    left, right = socket.socketpair()
    with left, right, attempt_deadline(60.0):
        adapter.watch(left)
        ours = watchdogs() - before
        assert len(ours) == 1
        adapter.abort()
        assert not any(thread.is_alive() for thread in ours)


def test_stop_closes_the_sockets_of_the_systems_own_session(server: FakeFeishu) -> None:
    # urllib3 2.x closes pooled connections only when they are garbage-collected; a stopped
    # system must not hold descriptors until then.
    app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
    system = actors.TokenSystem.start(app)
    system.proxy.get_token().get(timeout=5)
    gate = server.hold("app")  # a fetch still in flight when stop() comes
    held = system.proxy.get_token(actors.TokenKind.APP)
    assert gate.wait_for_waiting(1)
    adapter = system._adapter  # white box: which sockets the system opened
    assert adapter is not None
    opened = list(adapter._sockets)
    assert opened
    system.stop()
    gate.release()
    with pytest.raises(actors.SystemStoppedError):
        held.get(timeout=5)
    assert [sock.fileno() for sock in opened] == [-1] * len(opened)


# --- what the adapter needs of urllib3 -----------------------------------------------------------


def test_the_package_requires_urllib3_2() -> None:
    # requests>=2.31 allows urllib3 1.26, where the adapter cannot load and the body deadline
    # would not apply: the package itself must ask for urllib3 2.
    requires = [
        Requirement(line) for line in importlib.metadata.requires("lark-token-actors") or []
    ]
    (urllib3_requirement,) = [r for r in requires if r.name == "urllib3" and not r.marker]
    assert not urllib3_requirement.specifier.contains("1.26.20")
    assert urllib3_requirement.specifier.contains("2.0.0")


def test_urllib3_1_is_refused_at_import_saying_what_to_install() -> None:
    with pytest.raises(
        ImportError, match=r"needs urllib3>=2, found urllib3 1\.26\.20: pip install"
    ):
        require_urllib3_2("1.26.20")
    require_urllib3_2("2.0.0")
    require_urllib3_2(urllib3.__version__)  # type: ignore[attr-defined]


def test_the_only_private_urllib3_name_the_adapter_touches_is_the_new_conn_hook() -> None:
    # Every underscore name the module reads or sets, or defines as a method, that urllib3's
    # (or requests') classes also have: an override of a private hook, a private attribute.
    tree = ast.parse(inspect.getsource(_sockets))
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    names |= {
        item.name for cls in classes for item in cls.body if isinstance(item, ast.FunctionDef)
    }
    theirs: set[str] = set()
    for cls in (HTTPConnection, HTTPSConnection, HTTPConnectionPool, HTTPSConnectionPool):
        theirs |= set(dir(cls))
    theirs |= set(vars(HTTPSConnection("example.invalid", 443)))  # instance attributes too
    theirs |= set(dir(PoolManager)) | set(vars(PoolManager())) | set(vars(HTTPAdapter()))
    private = {n for n in names & theirs if n.startswith("_") and not n.startswith("__")}
    assert private == {"_new_conn"}


def test_the_lookup_keeps_the_trailing_dot_of_an_absolute_host_name(
    server: FakeFeishu, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    session, _ = tracked_session()
    port = server.base_url.rsplit(":", 1)[1]
    path = "/open-apis/auth/v3/tenant_access_token/internal"
    body = {"app_id": APP_ID, "app_secret": SECRET}
    answer = session.post(f"http://localhost.:{port}{path}", json=body, timeout=(5, 5))
    assert answer.json()["code"] == 0
    assert looked_up == ["localhost."]  # as urllib3 looks it up: an absolute name


# --- name lookups ----------------------------------------------------------------------------


def resolvers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "actors-resolve"]


@dataclasses.dataclass
class HangingName:
    """A host name whose lookup blocks in ``getaddrinfo`` (as a dead name server holds it)."""

    name: str = "open.hangs.example"
    asked: threading.Event = dataclasses.field(default_factory=threading.Event)
    answer: threading.Event = dataclasses.field(default_factory=threading.Event)


@pytest.fixture
def hanging_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingName]:
    """Its lookup answers once ``answer`` is set, with a loopback port nothing must connect to."""
    hanging = HangingName()
    real = socket.getaddrinfo
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host != hanging.name:
                return real(host, *args, **kwargs)
            hanging.asked.set()
            hanging.answer.wait()
            return real("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        try:
            yield hanging
        finally:
            hanging.answer.set()
            for thread in resolvers():
                thread.join(5)
        with pytest.raises(BlockingIOError):
            listener.accept()  # the late answer connected nothing


def test_a_name_lookup_that_hangs_ends_the_attempt_at_its_deadline(
    hanging_name: HangingName,
) -> None:
    app = actors.AppConfig(APP_ID, SECRET, base_url=f"https://{hanging_name.name}")
    # Three attempts, each with a 0.4 s deadline: the lookup alone would hold the first forever.
    policy = actors.RefreshPolicy(request_timeout=(0.2, 0.2), max_attempts=3, retry_base=0.01)
    with actors.TokenSystem.start(app, policy=policy) as system:
        with pytest.raises(actors.UpstreamError, match="deadline") as info:
            system.proxy.get_token().get(timeout=30)
        assert info.value.attempts == 3
        assert len(resolvers()) == 1  # the hanging lookup is shared, not one thread per attempt


def test_stop_does_not_wait_for_a_name_lookup_that_hangs(hanging_name: HangingName) -> None:
    before = set(our_threads())
    app = actors.AppConfig(APP_ID, SECRET, base_url=f"https://{hanging_name.name}")
    policy = actors.RefreshPolicy(request_timeout=(10.0, 10.0))
    system = actors.TokenSystem.start(app, policy=policy)
    pending = system.proxy.get_token()
    assert hanging_name.asked.wait(5)
    system.stop()
    with pytest.raises(actors.SystemStoppedError):
        pending.get(timeout=0)
    # No worker is left in the lookup, nor would one connect for 10 s after it: only the
    # thread still inside getaddrinfo (a C call nothing interrupts) is, until the resolver
    # answers.
    assert set(our_threads()) - before <= {"actors-resolve"}
    hanging_name.answer.set()
    for thread in resolvers():
        thread.join(5)
    assert set(our_threads()) <= before


def test_an_ip_address_is_not_looked_up_on_a_thread_of_its_own(server: FakeFeishu) -> None:
    # A thread start costs more than the rest of a cold fetch's client-side work.
    session, adapter = tracked_session()
    path = "/open-apis/auth/v3/tenant_access_token/internal"
    body = {"app_id": APP_ID, "app_secret": SECRET}
    with attempt_deadline(5.0):
        answer = session.post(server.base_url + path, json=body, timeout=(5, 5))
    assert answer.json()["code"] == 0
    assert not resolvers()
    adapter.abort()
