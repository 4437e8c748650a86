"""One behaviour suite, run through every way a caller can read a token, for every kind.

As pykka runs its test suite once per runtime (and cachetools' ``CacheTestMixin`` once per cache),
every test here takes the ``path`` fixture and runs once per read path:

- ``fast``: ``system.proxy.get_token()`` with fast reads on (the default): a hit is answered
  from the TokenActor's published snapshot, everything else goes through the mailbox;
- ``mailbox``: ``fast_reads=False``: every get is a message to the TokenActor;
- ``embedded``: another pykka actor tells ``system.actor_ref`` an ``actors.GetToken`` and
  receives an ``actors.TokenReply``;
- ``asyncio``: ``await system.proxy.aget_token()`` on an event loop.

The behaviours every kind shares also take the ``subject`` fixture and run once per kind of token
read: ``tenant`` (a tenant token, its neighbour the app token) and ``user`` (Alice's user token
after a login, her neighbour Bob's). A new read path is one adapter class (see
:class:`ReadPath`) added to ``READ_PATHS``; a new kind, one :class:`Subject` added to
``SUBJECTS``.
Only the public API (``actors.*``, ``actors.testing``) is used; time is a ManualClock, waits are
gates, events and ``system.settle()``: nothing sleeps and nothing measures wall time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar

import pykka
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import actors
from actors.testing import FakeFeishu, Gate, Reply, assertion_provider, oauth_error
from actors.testing._replies import dump_json
from tests.conftest import APP_ID, SECRET, SystemFactory
from tests.users.conftest import login

TENANT = actors.TokenKind.TENANT
APP = actors.TokenKind.APP
USER = actors.TokenKind.USER
WAIT = 5.0  # real seconds; only bounds a hang
E = TypeVar("E", bound=Exception)


class Pending(Protocol):
    """A get in progress, whatever the read path: ``concurrent.futures.Future`` fits as it is."""

    def result(self, timeout: float | None = None) -> str:
        """The token, or raise the get's error (TimeoutError-like if ``timeout`` runs out)."""
        ...

    def done(self) -> bool: ...


class ReadPath(Protocol):
    """One way of reading tokens from a system.

    ``get()`` returns only once the request has reached the system (answered, or queued in the
    TokenActor's mailbox), so anything the test sends the system afterwards is handled after it.
    ``stopped_error`` is what a get started after ``system.stop()`` fails with.
    """

    id: ClassVar[str]
    fast_reads: ClassVar[bool]
    stopped_error: ClassVar[type[Exception]]

    def get(
        self,
        system: actors.TokenSystem,
        kind: actors.TokenKind = TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> Pending: ...

    def close(self) -> None: ...


class _PykkaPending:
    """A ``pykka.Future`` seen through the :class:`Pending` interface."""

    def __init__(self, future: pykka.Future[str]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> str:
        return self._future.get(timeout=timeout)

    def done(self) -> bool:
        try:
            self._future.get(timeout=0)
        except pykka.Timeout:
            return False
        except Exception:  # resolved with an error: done all the same
            return True
        return True


class FastReads:
    id: ClassVar[str] = "fast"
    fast_reads: ClassVar[bool] = True
    stopped_error: ClassVar[type[Exception]] = actors.SystemStoppedError

    def get(
        self,
        system: actors.TokenSystem,
        kind: actors.TokenKind = TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> Pending:
        got = system.proxy.get_token(kind, tenant_key=tenant_key, app_id=app_id, user=user)
        return _PykkaPending(got)

    def close(self) -> None:
        return None


class MailboxOnly(FastReads):
    id: ClassVar[str] = "mailbox"
    fast_reads: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class _Ask:
    """To the embedding actor: ask ``target`` for a token; resolve ``future`` with the reply."""

    target: pykka.ActorRef[Any]
    request: dict[str, Any]
    future: concurrent.futures.Future[str]


class _Embedder(pykka.ThreadingActor):
    """An application actor that gets tokens without blocking its own mailbox."""

    def __init__(self, strays: list[actors.TokenReply]) -> None:
        super().__init__()
        self._waiting: dict[int, concurrent.futures.Future[str]] = {}
        self._tags = itertools.count()
        self._strays = strays

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Ask):
            tag = next(self._tags)
            self._waiting[tag] = message.future
            try:
                message.target.tell(
                    actors.GetToken(reply_to=self.actor_ref, tag=tag, **message.request)
                )
            except pykka.ActorDeadError as exc:  # what pykka does with a tell to a stopped actor
                del self._waiting[tag]
                message.future.set_exception(exc)
        elif isinstance(message, actors.TokenReply):
            future = self._waiting.pop(message.tag, None)
            if future is None:  # a second answer to one GetToken, or one nobody asked for
                self._strays.append(message)
            elif message.error is not None:
                future.set_exception(message.error)
            else:
                assert message.token is not None, message
                future.set_result(message.token)


class EmbeddingActor:
    """Gets through an application actor: ``GetToken(reply_to=its_ref)`` in, ``TokenReply`` out.

    pykka refuses a ``tell`` to a stopped actor with ``ActorDeadError``: after ``stop()`` the
    TokenActor never sees the message, so that is what an embedding actor gets.
    """

    id: ClassVar[str] = "embedded"
    fast_reads: ClassVar[bool] = True  # irrelevant to this path: GetToken is always a message
    stopped_error: ClassVar[type[Exception]] = pykka.ActorDeadError

    def __init__(self) -> None:
        self.strays: list[actors.TokenReply] = []
        self._ref: pykka.ActorRef[_Embedder] = _Embedder.start(self.strays)

    def get(
        self,
        system: actors.TokenSystem,
        kind: actors.TokenKind = TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> Pending:
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        request = {"kind": kind, "tenant_key": tenant_key, "app_id": app_id, "user": user}
        # ask(), not tell(): once it returns, the GetToken is in the TokenActor's mailbox.
        self._ref.ask(_Ask(system.actor_ref, request, future), timeout=WAIT)
        return future

    def close(self) -> None:
        self._ref.stop()
        assert self.strays == [], "every GetToken is answered exactly once"


def _mirror(task: asyncio.Future[str], result: concurrent.futures.Future[str]) -> None:
    if task.cancelled():
        result.cancel()
    elif (error := task.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())


class AsyncioReads:
    """Gets as coroutines (``await system.proxy.aget_token()``) on an event loop of their own,
    in a background thread, so the test's thread can hold and release the upstream meanwhile."""

    id: ClassVar[str] = "asyncio"
    fast_reads: ClassVar[bool] = True
    stopped_error: ClassVar[type[Exception]] = actors.SystemStoppedError

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-asyncio-loop")
        self._thread.start()

    def get(
        self,
        system: actors.TokenSystem,
        kind: actors.TokenKind = TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> Pending:
        async def start() -> concurrent.futures.Future[str]:
            task = asyncio.ensure_future(
                system.proxy.aget_token(kind, tenant_key=tenant_key, app_id=app_id, user=user)
            )
            # One loop iteration: the task runs up to its first suspension, i.e. it has been
            # answered or its Get is in the TokenActor's mailbox.
            await asyncio.sleep(0)
            result: concurrent.futures.Future[str] = concurrent.futures.Future()
            task.add_done_callback(lambda done: _mirror(done, result))
            return result

        return asyncio.run_coroutine_threadsafe(start(), self._loop).result(WAIT)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


# A new read path: its adapter class here, and every test below runs through it too.
READ_PATHS: list[type[ReadPath]] = [FastReads, MailboxOnly, EmbeddingActor, AsyncioReads]


@pytest.fixture(params=READ_PATHS, ids=[read_path.id for read_path in READ_PATHS])
def path(request: pytest.FixtureRequest) -> Iterator[ReadPath]:
    read_path: ReadPath = request.param()
    yield read_path
    read_path.close()


Start = Callable[..., actors.TokenSystem]


@pytest.fixture
def start(make_system: SystemFactory, vapp: actors.AppConfig, path: ReadPath) -> Start:
    """Start a system set up for ``path`` (default app: ``vapp``, on the manual clock)."""

    def start_(
        app: actors.AppConfig | list[actors.AppConfig] | None = None, **policy: Any
    ) -> actors.TokenSystem:
        return make_system(app or vapp, fast_reads=path.fast_reads, **policy)

    return start_


def gets_counted(system: actors.TokenSystem) -> tuple[int, int, int]:
    """(misses, coalesced, hits); a metrics() call is also a mailbox round trip."""
    m = system.metrics()
    return m.misses, m.coalesced, m.hits


# --- what is read: one kind of token, one of its keys and a neighbouring key ------------------


class Subject(Protocol):
    """The tokens a test reads, whatever their kind.

    ``key`` and ``neighbour`` are the ``get()`` arguments of two keys of one system;
    ``upstream`` and ``neighbour_upstream`` the fake's request kinds of their fetches. After
    :meth:`cold` the system knows both keys and has neither cached: the next get of each is a
    miss that makes one upstream request. ``policy`` is what that needs of the RefreshPolicy.
    """

    id: ClassVar[str]
    kind: ClassVar[actors.TokenKind]
    key: ClassVar[Mapping[str, Any]]
    neighbour: ClassVar[Mapping[str, Any]]
    upstream: ClassVar[str]
    neighbour_upstream: ClassVar[str]
    policy: ClassVar[Mapping[str, Any]]
    keys_fetched: ClassVar[int]  # keys a miss of ``key`` fetches: its own, and a prerequisite's

    def cold(
        self, system: actors.TokenSystem, server: FakeFeishu, clock: actors.ManualClock
    ) -> None: ...

    def fetched(self, server: FakeFeishu, *, neighbour: bool = False) -> int:
        """The key's (or its neighbour's) fetches the fake has seen: requests for a tenant or app
        token, successful rotations for a user's (a login is none)."""
        ...

    def renew(self, server: FakeFeishu) -> str | None:
        """Make the key's next fetch answer a new token; the token, if it is known now."""
        ...

    def app(self, server: FakeFeishu, clock: actors.ManualClock) -> actors.AppConfig | None:
        """The app the system serves (registered on ``server``); None: the suite's own."""
        ...


class Defaults:
    """What most subjects need: a new system has neither key cached, on the suite's app."""

    def cold(
        self, system: actors.TokenSystem, server: FakeFeishu, clock: actors.ManualClock
    ) -> None:
        return None

    def app(self, server: FakeFeishu, clock: actors.ManualClock) -> actors.AppConfig | None:
        return None


class TenantTokens(Defaults):
    """The app's tenant token; its neighbour is the app token. A new system has neither."""

    id: ClassVar[str] = "tenant"
    kind: ClassVar[actors.TokenKind] = TENANT
    key: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": TENANT})
    neighbour: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": APP})
    upstream: ClassVar[str] = "tenant"
    neighbour_upstream: ClassVar[str] = "app"
    policy: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    keys_fetched: ClassVar[int] = 1

    def fetched(self, server: FakeFeishu, *, neighbour: bool = False) -> int:
        return server.count(self.neighbour_upstream if neighbour else self.upstream)

    def renew(self, server: FakeFeishu) -> str | None:
        # The fake answers the same tenant token again while half an hour of it remains.
        server.script(self.upstream, Reply.ok("t-fresh", 7200))
        return "t-fresh"


ALICE, BOB = "ou_alice", "ou_bob"
ALICES: Mapping[str, Any] = MappingProxyType({"kind": USER, "user": ALICE})  # get() arguments
BOBS: Mapping[str, Any] = MappingProxyType({"kind": USER, "user": BOB})


class UserTokens(Defaults):
    """Alice's user token; its neighbour is Bob's. Both log in, then nobody reads their tokens
    for longer than ``idle_ttl``: the logins' tokens expire unrefreshed (an idle user's grant is
    only kept alive), so the next get of each is a miss that rotates that user's grant."""

    id: ClassVar[str] = "user"
    kind: ClassVar[actors.TokenKind] = USER
    key: ClassVar[Mapping[str, Any]] = ALICES
    neighbour: ClassVar[Mapping[str, Any]] = BOBS
    upstream: ClassVar[str] = "user"
    neighbour_upstream: ClassVar[str] = "user"
    policy: ClassVar[Mapping[str, Any]] = MappingProxyType({"idle_ttl": 3600.0})
    keys_fetched: ClassVar[int] = 1

    def cold(
        self, system: actors.TokenSystem, server: FakeFeishu, clock: actors.ManualClock
    ) -> None:
        for open_id in (ALICE, BOB):
            server.oauth.add_user(open_id)
            login(system, server, open_id)
        clock.advance(server.oauth.lifetimes.access_token)
        system.settle()

    def fetched(self, server: FakeFeishu, *, neighbour: bool = False) -> int:
        return server.oauth.rotations(BOB if neighbour else ALICE)

    def renew(self, server: FakeFeishu) -> str | None:
        return None  # every rotation answers a new access token


JSAPI = actors.TokenKind.JSAPI_TICKET
TICKET_PATH = "/open-apis/jssdk/ticket/get"


class JsapiTickets(Defaults):
    """The app's jsapi_ticket (fetched with its tenant token); its neighbour is the app token.
    The fake records a ticket request as a business call."""

    id: ClassVar[str] = "jsapi_ticket"
    kind: ClassVar[actors.TokenKind] = JSAPI
    key: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": JSAPI})
    neighbour: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": APP})
    upstream: ClassVar[str] = "business"
    neighbour_upstream: ClassVar[str] = "app"
    policy: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    keys_fetched: ClassVar[int] = 2  # the tenant token first

    def fetched(self, server: FakeFeishu, *, neighbour: bool = False) -> int:
        if neighbour:
            return server.count(self.neighbour_upstream)
        return sum(1 for r in server.requests if r.path == TICKET_PATH)

    def renew(self, server: FakeFeishu) -> str | None:
        # The fake answers the same ticket again while half an hour of it remains.
        data = {"ticket": "j-fresh", "expire_in": 7200}
        server.script(self.upstream, Reply.raw(dump_json({"code": 0, "msg": "ok", "data": data})))
        return "j-fresh"


class KeylessTenantTokens(Defaults):
    """A keyless app's tenant token (a client assertion, no secret: the v3 OAuth endpoint's
    jwt-bearer grant, recorded by the fake as a user-token request); its neighbour is the
    app's jsapi_ticket, fetched with that tenant token (the app has no app token)."""

    id: ClassVar[str] = "keyless"
    kind: ClassVar[actors.TokenKind] = TENANT
    key: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": TENANT})
    neighbour: ClassVar[Mapping[str, Any]] = MappingProxyType({"kind": JSAPI})
    upstream: ClassVar[str] = "user"
    neighbour_upstream: ClassVar[str] = "business"
    policy: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    keys_fetched: ClassVar[int] = 1

    def fetched(self, server: FakeFeishu, *, neighbour: bool = False) -> int:
        if neighbour:
            return sum(1 for r in server.requests if r.path == TICKET_PATH)
        return server.count(self.upstream)

    def app(self, server: FakeFeishu, clock: actors.ManualClock) -> actors.AppConfig | None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server.add_app(APP_ID, public_key=key.public_key())  # the same app, now keyless
        provider = assertion_provider(key, APP_ID, clock=clock)
        return actors.AppConfig(APP_ID, client_assertion=provider, base_url=server.base_url)

    def renew(self, server: FakeFeishu) -> str | None:
        # The fake answers the same tenant token again while half an hour of it remains.
        answer = {"code": 0, "access_token": "t-fresh", "expires_in": 7200, "token_type": "Bearer"}
        server.script(self.upstream, Reply.raw(dump_json(answer)))
        return "t-fresh"


SUBJECTS: list[type[Subject]] = [TenantTokens, UserTokens, JsapiTickets, KeylessTenantTokens]


@pytest.fixture(params=SUBJECTS, ids=[subject.id for subject in SUBJECTS])
def subject(request: pytest.FixtureRequest) -> Subject:
    made: Subject = request.param()
    return made


def started_cold(
    start: Start,
    subject: Subject,
    server: FakeFeishu,
    clock: actors.ManualClock,
    policy: Mapping[str, Any],
) -> actors.TokenSystem:
    """A system that knows ``subject``'s key and neighbour and has not cached them (see
    :meth:`Subject.cold`)."""
    system = start(subject.app(server, clock), **{**subject.policy, **policy})
    subject.cold(system, server, clock)
    return system


@pytest.fixture
def ready(start: Start, subject: Subject, vserver: FakeFeishu, clock: actors.ManualClock) -> Start:
    """Start a system for ``path`` and ``subject``, whose key and neighbour are not cached."""
    return lambda **policy: started_cold(start, subject, vserver, clock, policy)


# --- the behaviours of every kind -------------------------------------------------------------


def test_a_miss_fetches_exactly_once_and_returns_the_token(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    token = path.get(system, **subject.key).result(WAIT)
    assert vserver.valid_token(token)
    system.settle()
    assert subject.fetched(vserver) == 1
    assert gets_counted(system) == (1, 0, 0)


def test_a_hit_is_served_from_the_cache_without_an_upstream_request(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    token = path.get(system, **subject.key).result(WAIT)
    assert path.get(system, **subject.key).result(WAIT) == token
    system.settle()
    assert subject.fetched(vserver) == 1
    assert gets_counted(system) == (1, 0, 1)


def test_concurrent_misses_of_one_key_share_one_upstream_request(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    gate = vserver.hold(subject.upstream)
    callers = 50
    barrier = threading.Barrier(callers)
    pending: list[Pending] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        got = path.get(system, **subject.key)
        with lock:
            pending.append(got)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gate.wait_for_waiting(1)
    # Every get reached the system before this, and the one fetch is still held.
    assert gets_counted(system) == (1, callers - 1, 0)
    assert not any(p.done() for p in pending)
    gate.release()
    tokens = {p.result(WAIT) for p in pending}
    assert len(tokens) == 1
    assert vserver.valid_token(tokens.pop())
    assert subject.fetched(vserver) == 1


def test_invalidate_drops_exactly_that_token_and_the_next_get_returns_a_new_one(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    old = path.get(system, **subject.key).result(WAIT)
    other = path.get(system, **subject.neighbour).result(WAIT)
    # A business API answered 99991663 with `old`; Feishu has a new token for the next request.
    fresh = subject.renew(vserver)
    assert system.proxy.invalidate(old).get(timeout=WAIT) is True
    system.settle()
    new = path.get(system, **subject.key).result(WAIT)
    assert new != old
    assert new == fresh if fresh is not None else vserver.valid_token(new)
    assert path.get(system, **subject.neighbour).result(WAIT) == other  # untouched
    assert subject.fetched(vserver) == 2
    assert subject.fetched(vserver, neighbour=True) == 1
    metrics = system.metrics()
    assert metrics.invalidations == 1
    # The key's miss (and its prerequisite's, if it has one) and the neighbour's.
    assert metrics.fetches_by_cause == {"miss": subject.keys_fetched + 1, "invalidate": 1}


def test_invalidating_an_older_token_is_a_no_op(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    old = path.get(system, **subject.key).result(WAIT)
    subject.renew(vserver)
    assert system.proxy.invalidate(old).get(timeout=WAIT) is True
    system.settle()
    new = path.get(system, **subject.key).result(WAIT)
    assert new != old
    # A second caller that held the old token invalidates too late: nothing is dropped.
    assert system.proxy.invalidate(old).get(timeout=WAIT) is False
    assert system.proxy.invalidate("t-never-issued").get(timeout=WAIT) is False
    system.settle()
    assert path.get(system, **subject.key).result(WAIT) == new
    assert subject.fetched(vserver) == 2
    assert system.metrics().invalidations == 1


def test_stop_fails_a_pending_get_and_every_later_get(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    path.get(system, **subject.key).result(
        WAIT
    )  # cached: a fast read could answer it, but must not
    gate = vserver.hold(subject.neighbour_upstream)
    pending = path.get(system, **subject.neighbour)
    assert gate.wait_for_waiting(1)
    assert not pending.done()
    system.stop()
    with pytest.raises(actors.SystemStoppedError):
        pending.result(WAIT)
    with pytest.raises(path.stopped_error):
        path.get(system, **subject.key).result(WAIT)
    with pytest.raises(path.stopped_error):
        path.get(system, **subject.neighbour).result(WAIT)


def test_a_token_is_not_served_once_the_clock_passes_its_safety_margin(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = ready(safety_margin=180.0)
    first = path.get(system, **subject.key).result(WAIT)
    system.settle()
    gate = vserver.hold(subject.upstream)
    # Straight to expires_at - safety_margin, without giving the prewarm timer a turn first:
    # validity is checked when the get is read, whatever the timers did.
    clock.advance(7200 - 180)
    pending = path.get(system, **subject.key)
    assert gate.wait_for_waiting(1)  # a fetch is out, and held
    assert not pending.done()  # it waits for that fetch rather than take the old token
    gate.release()
    second = pending.result(WAIT)
    assert second != first
    assert vserver.valid_token(second)


def test_a_cached_key_is_answered_while_its_neighbours_fetch_is_held(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu
) -> None:
    system = ready()
    cached = path.get(system, **subject.key).result(WAIT)
    gate = vserver.hold(subject.neighbour_upstream)
    slow = path.get(system, **subject.neighbour)
    assert gate.wait_for_waiting(1)
    # Answered while the other key's fetch is held (indefinitely: only a release ends it).
    assert path.get(system, **subject.key).result(WAIT) == cached
    assert gate.waiting == 1
    assert not slow.done()
    gate.release()
    assert vserver.valid_token(slow.result(WAIT))


def test_metrics_count_each_get_exactly_once(
    path: ReadPath,
    ready: Start,
    subject: Subject,
    vserver: FakeFeishu,
    request: pytest.FixtureRequest,
) -> None:
    system = ready()
    gate = vserver.hold(subject.upstream)
    waiting = [path.get(system, **subject.key) for _ in range(3)]
    assert gate.wait_for_waiting(1)
    assert gets_counted(system) == (1, 2, 0)
    gate.release()
    token = waiting[0].result(WAIT)
    assert all(p.result(WAIT) == token for p in waiting)
    for _ in range(4):
        assert path.get(system, **subject.key).result(WAIT) == token
    m = system.metrics()
    assert (m.misses, m.coalesced, m.hits) == (1, 2, 4)
    assert m.gets == 7
    assert m.by_app_kind[APP_ID, subject.kind] == actors.KindMetrics(
        hits=4, misses=1, coalesced=2, fetch_success=1
    )
    # The actor times every get it answers; hits answered from the snapshot are timed one in
    # SAMPLE_EVERY per key, and those samples stand for exactly the hits counted.
    assert m.get_latency.count == m.gets  # sampled fast hits stand for exactly the hits counted
    assert m.hit_rate == pytest.approx(4 / 7)


def test_a_metrics_read_between_a_miss_and_its_hits_keeps_every_hit_in_the_latency_count(
    path: ReadPath, ready: Start, subject: Subject, request: pytest.FixtureRequest
) -> None:
    system = ready()
    token = path.get(system, **subject.key).result(WAIT)
    system.metrics()
    for _ in range(4):
        assert path.get(system, **subject.key).result(WAIT) == token
    m = system.metrics()
    assert (m.gets, m.hits, m.get_latency.count) == (5, 4, 5)


def test_a_hit_during_a_failing_refresh_is_counted_as_stale_served(
    path: ReadPath, ready: Start, subject: Subject, vserver: FakeFeishu, clock: actors.ManualClock
) -> None:
    system = ready(jitter=0.0, retry_base=10.0)
    token = path.get(system, **subject.key).result(WAIT)
    clock.advance(3600)  # a read half-way keeps the key read within idle_ttl: it is prewarmed
    system.settle()
    assert path.get(system, **subject.key).result(WAIT) == token
    vserver.script(subject.upstream, Reply.http(503), Reply.http(503))
    clock.advance(7200 - 600 - 3600)  # the prewarm fires and fails; a retry is scheduled
    system.settle()
    assert path.get(system, **subject.key).result(WAIT) == token
    m = system.metrics()
    assert (m.stale_served, m.hits) == (1, 2)


# --- tenant and app tokens ----------------------------------------------------------------------


def fail_together(
    path: ReadPath,
    system: actors.TokenSystem,
    gate: Gate,
    error: type[E],
    *,
    callers: int = 5,
    **key: Any,
) -> list[E]:
    """``callers`` gets of ``key`` wait on its one fetch, held by ``gate``; released, every one
    fails with ``error``: their errors."""
    pending = [path.get(system, **key) for _ in range(callers)]
    assert gate.wait_for_waiting(1)
    assert gets_counted(system) == (1, callers - 1, 0)  # all wait on the one request
    gate.release()
    errors = []
    for waiter in pending:
        with pytest.raises(error) as info:
            waiter.result(WAIT)
        errors.append(info.value)
    return errors


def test_a_permanent_error_reaches_every_waiter_and_is_not_cached(
    path: ReadPath, start: Start, vserver: FakeFeishu
) -> None:
    system = start(actors.AppConfig(APP_ID, "wrong-secret", base_url=vserver.base_url))
    for error in fail_together(path, system, vserver.hold("tenant"), actors.AuthError):
        assert error.code == 10014
        assert "wrong-secret" not in str(error)
    system.settle()
    assert vserver.count("tenant") == 1
    assert system.metrics().retries == 0  # permanent: never retried
    # Not cached: the next get asks again.
    with pytest.raises(actors.AuthError):
        path.get(system).result(WAIT)
    assert vserver.count("tenant") == 2


def test_a_cached_key_is_answered_while_another_apps_fetch_is_held(
    path: ReadPath, start: Start, vserver: FakeFeishu
) -> None:
    vserver.add_app("cli_slow", "slow-secret")
    system = start(
        [
            actors.AppConfig(APP_ID, SECRET, base_url=vserver.base_url),
            actors.AppConfig("cli_slow", "slow-secret", base_url=vserver.base_url),
        ]
    )
    cached = path.get(system, app_id=APP_ID).result(WAIT)
    gate = vserver.hold("tenant", app_id="cli_slow")
    slow = path.get(system, app_id="cli_slow")
    assert gate.wait_for_waiting(1)
    assert path.get(system, app_id=APP_ID).result(WAIT) == cached
    assert gate.waiting == 1
    assert not slow.done()
    gate.release()
    assert vserver.valid_token(slow.result(WAIT))


def test_reads_keep_a_key_from_idle_eviction(
    path: ReadPath, start: Start, clock: actors.ManualClock
) -> None:
    system = start(idle_ttl=3600.0)
    path.get(system).result(WAIT)
    for _ in range(24 * 6):  # a day, one read every 10 virtual minutes
        clock.advance(600)
        system.settle()
        path.get(system).result(WAIT)
    m = system.metrics()
    assert (m.idle_evictions, m.misses) == (0, 1)
    clock.advance(3 * 3600)  # nobody reads now: the next prewarm drops the key
    system.settle()
    assert system.metrics().idle_evictions == 1


# --- user tokens ------------------------------------------------------------------------------


@pytest.fixture
def users(start: Start, vserver: FakeFeishu, clock: actors.ManualClock) -> Start:
    """Start a system for ``path`` with Alice and Bob logged in and neither's token cached."""
    return lambda **policy: started_cold(start, UserTokens(), vserver, clock, policy)


def test_a_revoked_grant_fails_every_waiting_get_once_and_feishu_is_not_asked_again(
    path: ReadPath, users: Start, vserver: FakeFeishu
) -> None:
    system = users()
    needed: list[actors.ReauthorizationNeeded] = []

    def hear(event: object) -> None:
        if isinstance(event, actors.ReauthorizationNeeded):
            needed.append(event)

    system.subscribe(hear)
    vserver.oauth.revoke(ALICE)
    gate = vserver.hold("user")
    for error in fail_together(path, system, gate, actors.ReauthorizationRequired, **ALICES):
        assert (error.reason, error.app_id, error.user) == ("revoked", APP_ID, ALICE)
    system.settle()
    asked = vserver.count("user")
    # The grant ended: the next get has the same answer and Feishu is not asked again.
    with pytest.raises(actors.ReauthorizationRequired, match="revoked"):
        path.get(system, **ALICES).result(WAIT)
    system.settle()
    assert vserver.count("user") == asked
    assert needed == [actors.ReauthorizationNeeded(APP_ID, ALICE, "revoked")]
    assert vserver.valid_token(path.get(system, **BOBS).result(WAIT))  # Bob's grant is his
    assert vserver.oauth.refresh_reuses == 0


def test_a_rotation_failing_transiently_reaches_every_waiter_and_the_next_get_rotates_again(
    path: ReadPath, users: Start, vserver: FakeFeishu
) -> None:
    system = users(max_attempts=2, retry_base=0.0)
    vserver.script("user", oauth_error(20050), oauth_error(20050))
    gate = vserver.hold("user")
    for error in fail_together(path, system, gate, actors.UpstreamError, **ALICES):
        assert error.code == 20050
    system.settle()
    assert system.metrics().retries == 1
    # The grant was kept: the next get rotates it.
    assert vserver.valid_token(path.get(system, **ALICES).result(WAIT))
    assert vserver.oauth.rotations(ALICE) == 1
    assert vserver.oauth.refresh_reuses == 0
    assert vserver.oauth.grant_alive(ALICE, app_id=APP_ID)


def test_a_get_for_a_user_without_a_grant_fails_with_unknown_user(
    path: ReadPath, start: Start
) -> None:
    system = start()
    with pytest.raises(actors.ReauthorizationRequired) as info:
        path.get(system, USER, user="ou_nobody").result(WAIT)
    assert (info.value.reason, info.value.user) == ("unknown_user", "ou_nobody")


def test_user_is_required_for_user_tokens_and_refused_for_the_other_kinds(
    path: ReadPath, start: Start
) -> None:
    system = start()
    with pytest.raises(ValueError, match="user="):
        path.get(system, USER).result(WAIT)
    with pytest.raises(ValueError, match=r"only accepted for TokenKind\.USER"):
        path.get(system, TENANT, user=ALICE).result(WAIT)
