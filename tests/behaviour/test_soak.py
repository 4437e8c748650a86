"""A bounded soak: 64 caller threads, a marketplace app with 200 tenants and a self-built app,
8-second tokens, 10% random 503s plus a stream of other scripted faults; 30 s of real time
without a store and 30 s with a ``RedisStore`` on a real redis-server (every fetch then goes
through its leases, writes and notices).

It checks what a long run would break: every get resolves within its timeout; no caller gets an
error while a valid token was cached for its key; upstream calls stay within 10% of the ideal;
threads, file descriptors and memory come back to (or stay at) where they were.

The default run deselects it (``addopts`` in pyproject.toml); ``pytest -m soak`` runs it, as CI
does in a step of its own.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass, field

import pykka
import pytest

import actors
from actors.testing import FakeFeishu, RecordedRequest, Reply
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET, our_threads
from tests.redis_server import RedisServer

SOAK_SECONDS = 30.0  # each run (without and with a store), warm-up included; it ends by itself
WARMUP_SECONDS = 10.0  # memory is measured from here (after all first fetches and pools)
THREADS = 64
TENANTS = 200
# Token lifetime on the fake server, real seconds: a refresh per key every 5 s (40 a second).
# The fake server runs in this process, and under tracemalloc a request costs it and the client
# several times the CPU: with 6-second tokens (68 refreshes a second) the fetch queue saturated
# and prewarms fell 15% behind, which measured the tracer, not the system.
LIFETIME = 8.0
POLICY = actors.RefreshPolicy(
    safety_margin=1.0,
    prewarm_lead=3.0,
    jitter=0.1,
    retry_base=0.05,
    retry_cap=0.5,
    max_attempts=5,
    request_timeout=(1.0, 1.0),
    ticket_wait=5.0,
    seed=11,
)
FAILURE_RATE = 0.1  # share of token requests the fake answers with an HTML 503
CHAOS_EVERY = 0.25  # real seconds between two extra scripted faults
GET_TIMEOUT = 10.0  # a get not answered within this is a hung future
CALLER_PAUSE = 0.02  # between one caller's gets: 64 callers, at most ~3k gets/s
# Descriptors are counted after gc.collect(): stop() shuts the system's sockets down, but since
# urllib3 2 a dropped pool closes its connections only when it is garbage collected, and some
# are reachable from reference cycles (the stopped TokenActor is one) until the cyclic collector
# runs. The count right after stop() is printed; after collection only stragglers may remain.
FD_SLACK = 2
MEMORY_BOUND = 2 * 1024 * 1024  # bytes of growth allowed between warm-up and the end
TOLERANCE = 0.10  # upstream calls vs ideal

Key = tuple[str, str, str | None]  # (app_id, kind, tenant_key), as the fake server records them
KEYS: list[Key] = [
    (APP_ID, "tenant", None),
    (APP_ID, "app", None),
    (MARKET_ID, "app", None),
    *((MARKET_ID, "tenant", f"tenant-{i:03}") for i in range(TENANTS)),
]
CHAOS = [  # (kind, app_id to match or None, reply): faults besides the random 503s
    ("tenant", None, Reply.http(502)),
    ("tenant", None, Reply.truncated()),
    ("tenant", None, Reply.disconnect()),
    ("tenant", None, Reply.reset_mid_body()),
    ("tenant", None, Reply.rate_limited(reset=0.2)),
    ("tenant", None, Reply.gateway_rate_limited(reset=0.2)),
    ("tenant", None, Reply.code(12345, "mystery")),
    ("tenant", None, Reply.ok("x-nan", float("nan"))),
    ("app", None, Reply.http(500)),
    ("app", MARKET_ID, Reply.code(10012, "app_ticket invalid")),
]


@dataclass(frozen=True)
class Stored:
    """A token the system cached for a key, as its TokenRefreshed event tells: servable until
    ``serve_until`` (``expires_at`` is dated from when the request left, so the server's own
    issue time would make a token look valid a request's latency longer than it is)."""

    arrived: float  # when the event reached the subscriber: the token was cached by then
    serve_until: float


@dataclass
class Seen:
    """What callers saw, bounded whatever the run's length (memory is measured)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    gets: int = 0
    hung: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stored: dict[Key, list[Stored]] = field(default_factory=dict)  # per key, the last few
    while_valid: list[str] = field(default_factory=list)  # errors while a token was valid
    samples: dict[str, Key] = field(default_factory=dict)  # a few distinct errors, for the log

    def refreshed(self, event: object, now: float) -> None:
        """A TokenRefreshed event (subscribed to the system): the key's newest cached token."""
        if not isinstance(event, actors.TokenRefreshed):
            return
        key = (event.app_id, event.kind.value, event.tenant_key)
        with self.lock:
            known = self.stored.setdefault(key, [])
            known.append(Stored(now, event.expires_at - POLICY.safety_margin))
            del known[:-4]

    def token(self) -> None:
        with self.lock:
            self.gets += 1

    def error(self, key: Key, exc: Exception, started: float, asked: float) -> None:
        """A get begun at ``started`` whose future came back at ``asked`` failed.

        The system judged servability somewhere in [started, asked]. It owed the caller a token
        if one was cached before ``started`` and every token the key held from then on stayed
        servable past ``asked``.
        """
        with self.lock:
            self.gets += 1
            self.errors[type(exc).__name__] += 1
            if len(self.samples) < 5:
                self.samples.setdefault(str(exc), key)
            left = valid_for(self.stored.get(key, []), started, asked)
            if left is not None and len(self.while_valid) < 20:
                self.while_valid.append(f"{key}: {exc!r} with a token valid {left:.2f}s more")

    def timed_out(self) -> None:
        with self.lock:
            self.gets += 1
            self.hung += 1


def valid_for(stored: list[Stored], started: float, asked: float) -> float | None:
    """How long past ``asked`` the key stayed servable without a break since before ``started``,
    or None if it did not (see :meth:`Seen.error`)."""
    before = [i for i, s in enumerate(stored) if s.arrived <= started]
    if not before:
        return None
    left = min(s.serve_until for s in stored[before[-1] :]) - asked
    return left if left > 0 else None


def get(system: actors.TokenSystem, key: Key) -> pykka.Future[str]:
    app_id, kind, tenant_key = key
    return system.proxy.get_token(actors.TokenKind(kind), tenant_key=tenant_key, app_id=app_id)


def caller(system: actors.TokenSystem, seen: Seen, done: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not done.is_set():
        key = rng.choice(KEYS)
        started = time.monotonic()
        future = get(system, key)
        asked = time.monotonic()
        try:
            future.get(timeout=GET_TIMEOUT)
        except pykka.Timeout:
            seen.timed_out()
        except actors.SystemStoppedError:
            return
        except Exception as exc:
            seen.error(key, exc, started, asked)
        else:
            seen.token()
        done.wait(CALLER_PAUSE)


def chaos(server: FakeFeishu, done: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not done.wait(CHAOS_EVERY):
        kind, app_id, reply = rng.choice(CHAOS)
        server.script(kind, reply, app_id=app_id)


def ideal_calls(server: FakeFeishu, end: float, failed: int) -> tuple[float, float, int]:
    """The ideal number of upstream token requests, a floor under it, and the requests made.

    Per key, from its first request at ``first`` until ``end``: one successful fetch when the key
    is first read, then one per prewarm interval, ``lifetime - prewarm_lead`` (8 - 3 = 5 s) on
    average (the jitter is symmetric; the interval runs from when the request left, as
    ``expires_at`` does, so latency does not add).
    Over a span D that is 1 + D / interval fetches at most and D / interval at least; the expected
    count is 0.5 + D / interval. Every failed attempt (random 503s, scripted faults, timeouts)
    costs one request more: the server does not record which answers failed, so that term is the
    system's ``fetch_failure``, which the test checks against the server's count.
    """
    interval = LIFETIME - POLICY.prewarm_lead
    first: dict[Key, float] = {}
    made = token_requests(server)
    for request in made:
        assert request.app_id is not None  # token_requests keeps only those with an app
        first.setdefault((request.app_id, request.kind, request.tenant_key), request.at)
    ideal = sum(0.5 + (end - at) / interval for at in first.values()) + failed
    floor = sum((end - at) / LIFETIME for at in first.values()) + failed
    return ideal, floor, len(made)


def token_requests(server: FakeFeishu) -> list[RecordedRequest]:
    """The app and tenant token requests the server has seen so far."""
    return [r for r in server.requests if r.kind in ("app", "tenant") and r.app_id is not None]


TRACE_FRAMES = 4  # enough to see past json and http.server to the fake server's own frames
# email/ and http/client.py: header parsing (the fake server now records request headers, parsed
# a few frames below anything of the fake server's own that 4 frames can see).
NOT_OURS = (
    "*/actors/testing/*",
    "*/http/server.py",
    "*/http/client.py",
    "*/email/*",
    "*/socketserver.py",
    __file__,
)


def ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Only the system's allocations: not the fake server's (its request log grows by design,
    and its strings come from http.server and json), nor this test's bookkeeping."""
    return snapshot.filter_traces(
        [tracemalloc.Filter(False, pattern, all_frames=True) for pattern in NOT_OURS]
    )


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def start(server: FakeFeishu, seen: Seen, store: actors.RedisStore | None) -> actors.TokenSystem:
    """The system under soak: both apps, the marketplace app's ticket, its re-push wired, its
    refresh events recorded in ``seen``; with ``store`` when one is given."""
    server.add_app(APP_ID, SECRET)
    server.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
    server.set_failure_rate(FAILURE_RATE, seed=5)
    market = actors.AppType.MARKETPLACE
    apps = [
        actors.AppConfig(APP_ID, SECRET, base_url=server.base_url),
        actors.AppConfig(MARKET_ID, MARKET_SECRET, app_type=market, base_url=server.base_url),
    ]
    system = actors.TokenSystem.start(apps, policy=POLICY, store=store)
    system.subscribe(lambda event: seen.refreshed(event, time.monotonic()))

    def push(app_id: str, ticket: str) -> None:  # the app's app_ticket event handler
        system.proxy.set_app_ticket(ticket, app_id=app_id)

    server.on_ticket_resend = push
    system.proxy.set_app_ticket(server.issue_ticket(MARKET_ID), app_id=MARKET_ID).get(timeout=5)
    return system


@dataclass
class Run:
    """What the load phase measured besides what callers saw."""

    threads_warm: int
    warm: tracemalloc.Snapshot
    end: tracemalloc.Snapshot


def load(system: actors.TokenSystem, server: FakeFeishu, seen: Seen, until: float) -> Run:
    """Callers and chaos until ``until`` (monotonic); memory traced from the warm-up on."""
    done = threading.Event()
    workers = [
        threading.Thread(target=caller, args=(system, seen, done, i), name=f"soak-{i}")
        for i in range(THREADS)
    ]
    workers.append(threading.Thread(target=chaos, args=(server, done, 99), name="soak-chaos"))
    for worker in workers:
        worker.start()
    try:
        done.wait(WARMUP_SECONDS)
        threads_warm = len(our_threads())
        tracemalloc.start(TRACE_FRAMES)
        done.wait(2.0)  # let the steady state's short-lived objects be traced in both snapshots
        warm = ours(tracemalloc.take_snapshot())
        done.wait(max(0.0, until - time.monotonic()))
        end = ours(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
        done.set()
        for worker in workers:
            worker.join(GET_TIMEOUT + 5)
    assert not [w.name for w in workers if w.is_alive()], "a caller is stuck in a get"
    return Run(threads_warm, warm, end)


def test_the_oracle_owes_a_token_only_while_the_systems_own_expiry_leaves_it_servable() -> None:
    # The library dates expiry from when its request left; the server's issue time is later by
    # the request's latency, and an oracle dated from it blamed errors in that gap on the system.
    stored = [Stored(arrived=1.0, serve_until=10.0)]
    assert valid_for(stored, started=5.0, asked=5.001) == pytest.approx(4.999)
    assert valid_for(stored, started=9.999, asked=10.0) is None  # unservable by the check
    assert valid_for(stored, started=0.5, asked=0.6) is None  # not cached yet when it began
    # A newer token for the key that expires sooner is the one in force from its arrival on.
    stored.append(Stored(arrived=6.0, serve_until=7.0))
    assert valid_for(stored, started=5.0, asked=7.5) is None
    assert valid_for(stored, started=6.5, asked=6.6) == pytest.approx(0.4)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 120)
@pytest.mark.parametrize("shared", [False, True], ids=["no store", "RedisStore"])
def test_soak(
    shared: bool, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    # The redis-server (a process of its own, with its pipes) is up before anything is counted.
    redis_server: RedisServer | None = request.getfixturevalue("redis_server") if shared else None
    threads_before, fds_before = sorted(our_threads()), fds()
    started = time.monotonic()
    seen = Seen()
    with FakeFeishu(token_lifetime=LIFETIME) as server:
        store = None if redis_server is None else actors.RedisStore(redis_server.url)
        system = start(server, seen, store)
        try:
            run = load(system, server, seen, started + SOAK_SECONDS)
            # The system keeps refreshing until stop(): bracket the snapshot with the server's
            # counts, so both can be compared at one instant.
            made_before = len(token_requests(server))
            metrics = system.metrics()
            made_after = len(token_requests(server))
        finally:
            end = time.monotonic()
            system.stop()
    for thread in threading.enumerate():  # the fake server's connection handlers, closing
        if thread.name.endswith("(process_request_thread)"):
            thread.join(5)
    fds_stopped = fds()
    gc.collect()  # see FD_SLACK
    threads_after, fds_after = sorted(our_threads()), fds()
    ideal, floor, made = ideal_calls(server, end, metrics.fetch_failure)
    growth = run.end.compare_to(run.warm, "lineno")
    grown = sum(stat.size_diff for stat in growth)
    top = ", ".join(f"{s.traceback[0]} {s.size_diff / 1024:+.0f} KiB" for s in growth[:3])
    figures = (
        f"soak ({'RedisStore' if shared else 'no store'}): {end - started:.0f}s, "
        f"{THREADS} threads, {len(KEYS)} keys: {seen.gets} gets, "
        f"{seen.hung} hung, errors {dict(seen.errors)} ({len(seen.while_valid)} while a token "
        f"was valid); upstream {made} vs ideal {ideal:.0f} ({made / ideal - 1:+.1%}; "
        f"{metrics.fetch_success} ok, {metrics.fetch_failure} failed, {metrics.retries} retries, "
        f"{metrics.prewarms} "
        f"prewarms, {metrics.misses} misses); our threads {len(threads_before)} -> "
        f"{run.threads_warm} -> {len(threads_after)}; fds {fds_before} -> {fds_stopped} at "
        f"stop, {fds_after} after gc; memory {grown / 1024:+.0f} KiB after warm-up"
    )
    print(figures)
    print(f"largest growth: {top}")
    for line in seen.while_valid:
        print(f"error while valid: {line}")
    for text, key in seen.samples.items():
        print(f"error seen: {key}: {text}")
    with capsys.disabled():
        print(f"\n{figures}")

    assert seen.gets > 0 and seen.hung == 0
    assert seen.while_valid == []
    # No duplicate or looping fetches: within TOLERANCE above the ideal. Below it only means
    # prewarms fired late on a loaded machine; the floor says every key kept being refreshed
    # (a token lives LIFETIME, so a key served throughout needs at least one fetch per lifetime).
    assert made <= (1 + TOLERANCE) * ideal
    assert made >= floor
    # Every request the server saw is one the system counted (bar those in flight at the end).
    counted = metrics.fetch_success + metrics.fetch_failure
    assert counted <= made_after
    assert made_before <= counted + metrics.in_flight <= counted + POLICY.max_concurrent_fetches
    assert threads_after == threads_before
    assert fds_after <= fds_before + FD_SLACK
    assert grown < MEMORY_BOUND
