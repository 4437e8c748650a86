"""The fault matrix: every fault the fake server can produce x the phase it hits -> what callers
see, how many upstream requests it costs, and what stays cached. One table (``FAULTS``), one test.
Below it, the store's faults on a real redis-server: a second table (``STORE_CASES``).

Phases (on a ManualClock: nothing time-based happens until the test advances it):

- ``cold``: nothing cached; three concurrent gets share the failing fetch.
- ``swr``: a valid token is cached and its prewarm fails; gets during (and after) the failed
  refresh are served the cached token at once (stale-while-revalidate).
- ``prewarm``: the same, carried on to the retry later: the token stays served until a later
  refresh replaces it; no caller ever sees an error.
- ``invalidate``: ``invalidate(token)`` drops the cached token and the refetch fails; three gets
  wait for it.
- ``stop``: the fault hits the first attempt; the refresh's next upstream request (the retry, or
  a marketplace app's wait for a re-pushed app_ticket) is held, then ``stop()``: the get fails
  with SystemStoppedError and no thread of ours is left.

Every fault runs in every phase (121 cases, about 12 s) except ``stop`` for the permanent codes
(10003, 10014, 99991543) and for 10012 with a re-pushed ticket: those refreshes end within their
first attempt (fail, or reticket and succeed), so there is no later fetch to stop in.

An outcome (``Outcome``): ``sees`` lists the distinct answers callers got, in order ("old": the
token cached before the phase, "new": a fresh valid one, or the error class with the attempts it
reports, "UpstreamError x2"); ``requests`` counts upstream requests by kind during the phase;
``after`` is what a later get finds ("old"/"new" served from the cache, "nothing": it has to
fetch); ``app_token`` (marketplace tenant keys) whether the app token survived the phase.
Every policy here allows two attempts per refresh (``max_attempts=2``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest
import redis

import actors
from actors.stores import _layout as layout
from actors.testing import FakeFeishu, FunctionSource, Gate, Reply, wait_listening
from actors.testing._stores import noticed_count
from tests.conftest import APP_ID, MARKET_ID, MARKET_SECRET, SECRET, SystemFactory, our_threads
from tests.redis_server import RedisServer, Relay
from tests.stores.conftest import PREFIX, counting_source, text_keys, wait_for
from tests.stores.test_faults import (
    BAD_NOTICES,
    BAD_TICKETS,
    BAD_VALUES,
    OTHER_ID,
    OTHER_SECRET,
    Mutation,
    seed,
)
from tests.stores.test_faults import BASE_URL as STORE_BASE_URL

APP, TENANT = actors.TokenKind.APP, actors.TokenKind.TENANT
STEP = 1.0  # virtual seconds per step
PREWARM_LEAD = 600.0
RETRY_WAIT = 5.0  # past any backoff here: retry_cap 2 s, rate-limit reset 3 s
KINDS = ("app", "tenant", "resend")
NAN, INF = float("nan"), float("inf")
POLICY: dict[str, Any] = {"max_attempts": 2, "retry_base": 1.0, "retry_cap": 2.0, "jitter": 0.0}
POLICY |= {"prewarm_lead": PREWARM_LEAD, "ticket_wait": 60.0}
SHORT = {"request_timeout": (0.2, 0.2)}  # a 0.4 s deadline per attempt (connect + read)


@dataclass(frozen=True)
class Outcome:
    sees: tuple[str, ...]
    requests: dict[str, int]
    after: str
    app_token: str = "-"


def fails(error: str, after: str = "nothing", app_token: str = "-", **requests: int) -> Outcome:
    return Outcome((error,), requests, after, app_token)


def served(*sees: str, after: str = "old", app_token: str = "-", **requests: int) -> Outcome:
    return Outcome(sees, requests, after, app_token)


def stopped(**requests: int) -> Outcome:
    return Outcome(("SystemStoppedError",), requests, "stopped")


PHASES = ("cold", "swr", "prewarm", "invalidate", "stop")


def cells(*outcomes: Outcome | None) -> dict[str, Outcome | None]:
    return dict(zip(PHASES, outcomes, strict=True))


# Expected outcomes, phase by phase: cold, swr, prewarm, invalidate, stop.
UP2, RL2 = "UpstreamError x2", "RateLimitedError x2"


def transient(error: str) -> dict[str, Outcome | None]:
    return cells(
        fails(error, tenant=2),
        served("old", tenant=2),
        served("old", "new", after="new", tenant=3),
        fails(error, tenant=2),
        stopped(tenant=2),
    )


TRANSIENT, RATE_LIMITED = transient(UP2), transient(RL2)
PERMANENT = cells(
    fails("AuthError", tenant=1),
    served("old", tenant=1),
    served("old", "new", after="new", tenant=2),
    fails("AuthError", tenant=1),
    None,  # no retry to stop in: the refresh ends with the first answer
)
# The marketplace tenant endpoint refusing the app token: drop it, refetch it, retry.
APP_TOKEN_REFUSED = cells(
    fails(UP2, app_token="dropped", app=2, tenant=2),
    served("old", app_token="dropped", app=1, tenant=2),
    served("old", "new", after="new", app_token="kept", app=2, tenant=3),
    fails(UP2, app_token="dropped", app=1, tenant=2),
    stopped(app=2, tenant=2),
)
TICKET_REPUSHED = cells(
    served("new", after="new", app=2, resend=1),
    served("old", "new", after="new", app=2, resend=1),
    served("old", "new", after="new", app=2, resend=1),
    served("new", after="new", app=2, resend=1),
    None,  # the reticket completes within the first settle: nothing left to stop in
)
TICKET_NEVER_COMES = cells(
    fails("AppTicketError", app=1, resend=1),
    served("old", app=1, resend=1),
    served("old", "new", after="new", app=2, resend=1),
    fails("AppTicketError", app=1, resend=1),
    stopped(app=1, resend=1),
)


@dataclass(frozen=True)
class Fault:
    id: str
    expect: dict[str, Outcome | None]
    replies: tuple[Reply, ...] = ()  # scripted for the key's kind, first in first out
    hang: bool = False  # hold every request of the key's kind until disarmed
    target: str = "self"  # self-built tenant token | "market" tenant token | "market-app" token
    repush: bool = True  # the fake pushes a new app_ticket when asked to resend one
    short: bool = False  # with SHORT request timeouts
    detail: str = ""  # a regex the error's text must match (SystemStoppedError excepted)
    min_gap: float = 0.0  # virtual seconds at least between the first two attempts
    stop_in: str = "retry"  # phase stop: hold the retry's request | "ticket": the ticket wait


def twice(reply: Reply) -> tuple[Reply, ...]:
    return (reply, reply)


NO_TOKEN = '{"code":0,"msg":"ok","expire":7200}'
DRIP = Reply.drip(Reply.ok("x-drip", 7200), interval=0.05)  # ~5 s for the body
GATEWAY_429 = Reply.gateway_rate_limited(reset=3)
FAULTS = [
    Fault("http-500", TRANSIENT, twice(Reply.http(500)), detail="HTTP 500.*non-JSON"),
    Fault("http-502", TRANSIENT, twice(Reply.http(502)), detail="HTTP 502.*non-JSON"),
    Fault("http-503", TRANSIENT, twice(Reply.http(503)), detail="HTTP 503.*non-JSON"),
    Fault("reset-mid-body", TRANSIENT, twice(Reply.reset_mid_body(after=16))),
    Fault("disconnect", TRANSIENT, twice(Reply.disconnect()), detail="no response"),
    Fault("truncated", TRANSIENT, twice(Reply.truncated()), detail="malformed body"),
    Fault("drip-past-deadline", TRANSIENT, twice(DRIP), short=True, detail="0.4s deadline"),
    Fault("hang-past-deadline", TRANSIENT, hang=True, short=True, detail="timed out|deadline"),
    Fault("rate-limited", RATE_LIMITED, twice(Reply.rate_limited(reset=3)), min_gap=3.0),
    Fault("gateway-429", RATE_LIMITED, twice(GATEWAY_429), detail="HTTP 429", min_gap=3.0),
    Fault("code-10003", PERMANENT, (Reply.code(10003, "invalid param", status=400),)),
    Fault("code-10014", PERMANENT, (Reply.code(10014, "app secret invalid", status=400),)),
    Fault("code-99991543", PERMANENT, (Reply.code(99991543, "app_id or secret incorrect"),)),
    Fault("unknown-code", TRANSIENT, twice(Reply.code(12345, "mystery")), detail="code 12345"),
    Fault("tenant-99991663", APP_TOKEN_REFUSED, twice(Reply.code(99991663)), target="market"),
    Fault("tenant-99991664", APP_TOKEN_REFUSED, twice(Reply.code(99991664)), target="market"),
    Fault("ticket-10012-repushed", TICKET_REPUSHED, (Reply.code(10012),), target="market-app"),
    Fault(
        "ticket-10012-never-comes",
        TICKET_NEVER_COMES,
        (Reply.code(10012),),
        target="market-app",
        repush=False,
        stop_in="ticket",
    ),
    Fault("expire-1e10", TRANSIENT, twice(Reply.ok("x-huge", 1e10)), detail="usable"),
    Fault("expire-nan", TRANSIENT, twice(Reply.ok("x-nan", NAN)), detail="usable"),
    Fault("expire-inf", TRANSIENT, twice(Reply.ok("x-inf", INF)), detail="usable"),
    Fault("expire-zero", TRANSIENT, twice(Reply.ok("x-zero", 0)), detail="usable"),
    Fault("expire-negative", TRANSIENT, twice(Reply.ok("x-neg", -5)), detail="usable"),
    Fault("no-token-field", TRANSIENT, twice(Reply.raw(NO_TOKEN)), detail="usable"),
    Fault("non-object-json", TRANSIENT, twice(Reply.raw("[1, 2, 3]")), detail="malformed"),
]
CASES = [
    pytest.param(fault, phase, id=f"{fault.id}-{phase}")
    for fault in FAULTS
    for phase in PHASES
    if fault.expect[phase] is not None
]


@dataclass
class Case:
    """One fault on one running system: arms it, drives the clock, labels what callers get."""

    fault: Fault
    system: actors.TokenSystem
    server: FakeFeishu
    clock: actors.ManualClock
    kind: actors.TokenKind
    tenant_key: str | None
    app_id: str
    old: str | None = None
    gate: Gate | None = None
    events: list[Any] = field(default_factory=list)
    mark: int = 0  # events before this index belong to the set-up
    first: int = 0  # the server's requests before this index, too
    pushes: int = 0  # app_tickets the fake pushed and the system took
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def script_kind(self) -> str:
        return self.kind.value

    def get(self) -> pykka.Future[str]:
        return self.system.proxy.get_token(
            self.kind, tenant_key=self.tenant_key, app_id=self.app_id
        )

    def waiting_gets(self, first: Callable[[], object] = lambda: None) -> list[pykka.Future[str]]:
        """``first()`` (which may start a fetch), then three gets, all parked on the key before
        the fetch can answer: a fast failure must not end it before the last get joins."""
        gate = self.server.hold(self.script_kind)
        first()
        futures = [self.get() for _ in range(3)]
        self.system.proxy.metrics().get(timeout=5)  # one mailbox: the gets are in before it
        gate.release()
        return futures

    def arm(self) -> None:
        self.mark, self.first = len(self.events), len(self.server.requests)
        self.server.script(self.script_kind, *self.fault.replies)
        if self.fault.hang:
            self.gate = self.server.hold(self.script_kind)

    def disarm(self) -> None:
        if self.gate is not None:
            self.gate.release()
        if self.fault.target == "market-app" and not self.fault.repush:  # the ticket arrives
            ticket = self.server.issue_ticket(MARKET_ID)
            self.system.proxy.set_app_ticket(ticket, app_id=MARKET_ID).get(timeout=5)

    def push(self, app_id: str, ticket: str) -> None:
        """The app's event handler: the fake re-pushed an app_ticket (on its own thread)."""
        self.system.proxy.set_app_ticket(ticket, app_id=app_id).get(timeout=5)
        with self.cond:
            self.pushes += 1
            self.cond.notify_all()

    def settle(self) -> None:
        """settle(), and wait for app_tickets the fake is pushing (it does so on a thread of its
        own, which settle() cannot see) to have reached the system, then settle again."""
        self.system.settle()
        if self.fault.repush and self.fault.target == "market-app":
            with self.cond:
                self.cond.wait_for(lambda: self.pushes >= self.server.count("resend"), 5)
            self.system.settle()

    def counts(self) -> dict[str, int]:
        return {kind: self.server.count(kind) for kind in KINDS}

    def since(self, base: dict[str, int]) -> dict[str, int]:
        now = self.counts()
        return {k: now[k] - base[k] for k in KINDS if now[k] != base[k]}

    def label(self, value: str | BaseException) -> str:
        if isinstance(value, BaseException):
            name = type(value).__name__
            if isinstance(value, actors.UpstreamError):
                name += f" x{value.attempts}"
            detail = self.fault.detail
            if detail and not isinstance(value, actors.SystemStoppedError):
                name += "" if re.search(detail, str(value)) else f" ({value})"
            return name
        if not self.server.valid_token(value) or value.startswith("x-"):
            return f"bogus {value}"
        return "old" if value == self.old else "new"

    def resolve(self, future: pykka.Future[str], limit: int = 600) -> str:
        """Advance virtual time step by step until ``future`` resolves; label the answer."""
        for _ in range(limit):
            self.settle()
            try:
                return self.label(future.get(timeout=0))
            except pykka.Timeout:
                self.clock.advance(STEP)
            except Exception as exc:
                return self.label(exc)
        return "unresolved"

    def get_now(self) -> str:
        """A get that must be answered without the clock moving (from the cache)."""
        try:
            return self.label(self.get().get(timeout=5))
        except pykka.Timeout:
            return "waited"
        except Exception as exc:
            return self.label(exc)

    def ended(self, *, success_only: bool = False) -> bool:
        """Whether a refresh of the key ended (succeeded, or failed for good) since arm()."""
        key = (self.app_id, self.kind, self.tenant_key)
        return any(
            (e.app_id, e.kind, e.tenant_key) == key
            and (isinstance(e, actors.TokenRefreshed) or not (success_only or e.will_retry))
            for e in self.events[self.mark :]
        )

    def serve_until(self, done: Callable[[], bool], limit: int = 400) -> list[str]:
        """One get per virtual second until ``done()``: what callers were served meanwhile."""
        seen = []
        for _ in range(limit):
            self.settle()
            seen.append(self.get_now())
            if done():
                return seen
            self.clock.advance(STEP)
        return [*seen, "refresh never ended"]

    def cache_token(self) -> None:
        """Cache a token for the key, then step up to just before its prewarm is due."""
        if self.fault.target == "market":  # the app token's own prewarm comes 1000 s earlier
            self.system.proxy.get_token(APP, app_id=MARKET_ID).get(timeout=5)
            self.clock.advance(1000)
            self.settle()
        self.old = self.get().get(timeout=5)
        self.settle()

    def advance_to_prewarm(self) -> None:
        expires_at = self.server.expires_at(self.old or "")
        assert expires_at is not None
        while (left := expires_at - PREWARM_LEAD - STEP - self.clock.now()) > 0:
            self.clock.advance(min(100.0, left))
            self.settle()

    def probe(self) -> tuple[str, str]:
        """What later gets find: the key's cached token (or nothing), the app token's fate."""
        app = "-"
        if self.fault.target == "market":
            base = self.counts()
            self.resolve(self.system.proxy.get_token(APP, app_id=MARKET_ID))
            app = "dropped" if self.since(base).get("app") else "kept"
        base = self.counts()
        answer = self.resolve(self.get())
        return ("nothing" if self.since(base) else answer), app

    def min_gap(self) -> float:
        """Virtual seconds between the first two requests of the key's kind since arm()."""
        at = [r.at for r in self.server.requests[self.first :] if r.kind == self.script_kind]
        return at[1] - at[0] if len(at) > 1 else float("inf")


def distinct(labels: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(labels))


def run_cold(case: Case) -> Outcome:
    base = case.counts()
    case.arm()
    futures = case.waiting_gets()
    sees = [case.resolve(future) for future in futures]
    requests = case.since(base)
    case.disarm()
    return Outcome(distinct(sees), requests, *case.probe())


def run_prewarm(case: Case, *, recover: bool) -> Outcome:
    case.cache_token()
    case.advance_to_prewarm()
    base = case.counts()
    case.arm()
    seen = case.serve_until(case.ended)
    case.disarm()
    if recover:  # carry on: the token stays served until a later refresh replaces it
        seen += case.serve_until(lambda: case.ended(success_only=True))
        seen.append(case.get_now())
    return Outcome(distinct(seen), case.since(base), *case.probe())


def run_invalidate(case: Case) -> Outcome:
    case.cache_token()
    case.server.rotate(case.app_id)  # revoked upstream: why a caller invalidates a token
    base = case.counts()
    case.arm()
    dropped: list[bool] = []
    futures = case.waiting_gets(
        lambda: dropped.append(case.system.proxy.invalidate(case.old or "").get(timeout=5))
    )
    sees = distinct([case.resolve(future) for future in futures])
    requests = case.since(base)
    case.disarm()
    return Outcome(
        sees if dropped == [True] else ("invalidate dropped nothing",), requests, *case.probe()
    )


def run_stop(case: Case, threads_before: set[str]) -> Outcome:
    base = case.counts()
    case.arm()
    future = case.get()
    case.settle()  # the first attempt meets the fault; the refresh goes on (retry or ticket)
    if case.fault.stop_in == "retry":  # hold the retry's request; wait until it is held
        gate = case.gate or case.server.hold(case.script_kind)
        held = gate.waiting
        case.clock.advance(RETRY_WAIT)
        assert gate.wait_for_waiting(held + 1), "the retry never reached the server"
    case.system.stop()
    try:
        sees = case.label(future.get(timeout=5))
    except Exception as exc:
        sees = case.label(exc)
    left = sorted(set(our_threads()) - threads_before)
    return Outcome((sees,), case.since(base), f"threads left: {left}" if left else "stopped")


@pytest.mark.parametrize(("fault", "phase"), CASES)
def test_fault_matrix(
    fault: Fault,
    phase: str,
    vserver: FakeFeishu,
    clock: actors.ManualClock,
    make_system: SystemFactory,
) -> None:
    threads_before = set(our_threads())
    if fault.target == "self":
        app = actors.AppConfig(APP_ID, SECRET, base_url=vserver.base_url)
    else:
        market = actors.AppType.MARKETPLACE
        app = actors.AppConfig(MARKET_ID, MARKET_SECRET, app_type=market, base_url=vserver.base_url)
    system = make_system(app, **POLICY, **(SHORT if fault.short else {}))
    kind = APP if fault.target == "market-app" else TENANT
    tenant_key = "tk-1" if fault.target == "market" else None
    case = Case(fault, system, vserver, clock, kind, tenant_key, app.app_id)
    system.subscribe(case.events.append)
    if fault.target != "self":
        system.proxy.set_app_ticket(vserver.issue_ticket(MARKET_ID)).get(timeout=5)
        if fault.repush:
            vserver.on_ticket_resend = case.push

    if phase == "cold":
        observed = run_cold(case)
    elif phase in ("swr", "prewarm"):
        observed = run_prewarm(case, recover=phase == "prewarm")
    elif phase == "invalidate":
        observed = run_invalidate(case)
    else:
        observed = run_stop(case, threads_before)

    expected = fault.expect[phase]
    assert expected is not None
    assert observed == expected, f"observed {observed}"
    assert case.min_gap() >= fault.min_gap  # the backoff honoured the rate limit's reset header


# --- store faults: what Redis, or anyone who can write to it, hands a process -------------------
#
# A second table, on a real redis-server and the real clock: each row is one kind of bad shared
# state; every row expects service to go on. Phases:
#
# - ``cold``: a process with nothing cached meets the fault (its key's value in Redis is bad, its
#   notices are garbage, its Redis failed over).
# - ``warm``: a process that cached the shared token before the fault keeps serving it from its
#   own cache; when it invalidates the token it gets a fresh one, never the bad value.
#
# An outcome (``StoreOutcome``): ``sees`` the distinct tokens the process was served, in order
# ("shared": the one Redis held before the fault, "fresh 1", "fresh 2": the first and second
# from this test's upstream, anything else is named as it is); ``upstream`` the requests made in
# the phase; ``next_process`` what a process started afterwards gets ("fresh 1 from Redis": with
# no upstream request of its own); ``health`` what the faulted process's system.health() says.
# Each fault's own test, with what it logs and more kinds of each, is in
# tests/stores/test_faults.py; rows too slow for a matrix (a 20,000-notice flood, four processes
# across a failover) have a fast representative here and their own test there.


STORE_APP = actors.AppConfig(APP_ID, SECRET, base_url=STORE_BASE_URL)
STORE_OTHER = actors.AppConfig(OTHER_ID, OTHER_SECRET, base_url=STORE_BASE_URL)


@dataclass(frozen=True)
class StoreOutcome:
    sees: tuple[str, ...]
    upstream: int
    next_process: str
    health: str = "store up, faults counted"


@dataclass
class StoreCase:
    """One store fault on a real Redis: the processes (systems), their upstream, the labels."""

    stores: Callable[..., actors.RedisStore]
    systems: list[actors.TokenSystem]
    client: redis.Redis
    upstream: FunctionSource = field(default_factory=lambda: counting_source(name="fresh"))
    shared: str = ""

    def start(self, apps: Any = STORE_APP, *, url: str | None = None) -> actors.TokenSystem:
        store = self.stores(url, failure_threshold=1) if url else self.stores(failure_threshold=1)
        self.systems.append(actors.TokenSystem.start(apps, store=store, source=self.upstream))
        return self.systems[-1]

    def label(self, token: str) -> str:
        if token == self.shared:
            return "shared"
        if token.startswith("t-") and token.endswith("-fresh"):
            return f"fresh {int(token.split('-')[1])}"
        return f"bogus {token[:40]!r}"

    def next_process(self, url: str | None = None) -> str:
        before = len(self.upstream.requests)
        token = self.label(self.start(url=url).proxy.get_token().get(timeout=5))
        return token + (" from Redis" if len(self.upstream.requests) == before else " fetched")


def health_label(system: actors.TokenSystem) -> str:
    health = system.health()
    store = health.store
    assert store is not None
    words = ["store up" if store.reachable else "store down"]
    words += ["breaker open"] if store.breaker_open else []
    words += ["faults counted"] if store.faults else []
    words += [f"{health.keys_failing} keys failing"] if health.keys_failing else []
    return ", ".join(words)


def run_bad_value(case: StoreCase, mutate: Mutation, phase: str) -> StoreOutcome:
    values = seed(case.stores, case.client)
    key, value = values[APP_ID]
    case.shared = str(value["token"])
    seen = []
    if phase == "warm":
        process = case.start()
        seen.append(process.proxy.get_token().get(timeout=5))
        base = len(case.upstream.requests)
        mutate(case.client, key, value, values[OTHER_ID][0])
        seen.append(process.proxy.get_token().get(timeout=5))  # its own cache
        process.proxy.invalidate(seen[-1]).get(timeout=5)
    else:
        base = len(case.upstream.requests)
        mutate(case.client, key, value, values[OTHER_ID][0])
        process = case.start()
    seen.append(process.proxy.get_token().get(timeout=5))
    upstream = len(case.upstream.requests) - base
    return StoreOutcome(
        distinct([case.label(t) for t in seen]),
        upstream,
        case.next_process(),
        health_label(process),
    )


def run_wrong_type_of_another_app(case: StoreCase, phase: str) -> StoreOutcome:
    """Item: one app's key of the wrong Redis type is that key's problem only."""
    values = seed(case.stores, case.client)
    case.shared = str(values[APP_ID][1]["token"])
    other_key = values[OTHER_ID][0]
    case.client.delete(other_key)
    case.client.hset(other_key, "oops", "a hash")
    process = case.start([STORE_APP, STORE_OTHER])
    other = process.proxy.get_token(app_id=OTHER_ID).get(timeout=5)
    mine = process.proxy.get_token(app_id=APP_ID).get(timeout=5)
    return StoreOutcome(
        distinct([case.label(other), case.label(mine)]),
        len(case.upstream.requests),
        case.next_process(),
        health_label(process),
    )


def invalidation_behind(case: StoreCase, publish: Callable[[str], None]) -> StoreOutcome:
    """Two listening processes share a token; ``publish(channel)`` sends the fault; then the
    first invalidates the token, and the second must stop serving it at once."""
    first, second = case.start(), case.start()
    assert all(wait_listening(s._process.store, timeout=5) for s in (first, second))  # type: ignore[arg-type]
    held = first.proxy.get_token().get(timeout=5)
    case.shared = held
    seen = [second.proxy.get_token().get(timeout=5)]
    publish(layout.channel(PREFIX))
    first.proxy.invalidate(held).get(timeout=5)

    def moved_on() -> bool:
        seen.append(second.proxy.get_token().get(timeout=5))
        return seen[-1] != held

    wait_for(moved_on, 10.0, "the real invalidation behind the fault")
    store = second._process.store
    assert isinstance(store, actors.RedisStore)
    assert noticed_count(store) <= 4096  # bounded, however many notices came
    assert case.client.pubsub_numsub(layout.channel(PREFIX))[0][1] == 2  # nobody fell off
    # The first process fetched the token, and again after its invalidation.
    return StoreOutcome(
        distinct([case.label(t) for t in seen]),
        len(case.upstream.requests) - 1,
        case.next_process(),
        health_label(second),
    )


FAST_FLOOD = 2_000  # tests/stores/test_faults.py floods 20,000 (several seconds to publish)


def run_notice_flood(case: StoreCase, phase: str) -> StoreOutcome:
    def publish(channel: str) -> None:
        pipe = case.client.pipeline(transaction=False)
        for _ in range(FAST_FLOOD):
            body = {"v": 2, "digest": secrets.token_hex(32), "origin": "flood", "ver": 1}
            pipe.publish(channel, json.dumps(body))
        pipe.execute()

    return invalidation_behind(case, publish)


def run_malformed_notices(case: StoreCase, phase: str) -> StoreOutcome:
    def publish(channel: str) -> None:
        for notice in BAD_NOTICES.values():
            case.client.publish(channel, notice)

    return invalidation_behind(case, publish)


def run_failover_to_a_slower_clock(
    case: StoreCase, failover: tuple[RedisServer, RedisServer, Relay]
) -> StoreOutcome:
    """A fast representative of the four-process failover test in tests/stores/test_faults.py:
    one write before the failover, one after it on a primary whose clock is a minute slow."""
    primary, replica, relay = failover
    # Ten-minute tokens: the new primary's clock, a minute slow, reads a replicated TTL a minute
    # longer, and a 2-hour token would then exceed Feishu's bound and be refetched once.
    case.upstream = counting_source(600.0, name="fresh")
    with (
        redis.Redis(port=primary.port, socket_timeout=5) as old,
        redis.Redis(port=replica.port, socket_timeout=5) as new,
    ):
        # Sync the replica at once, not after Redis's default 5 s wait for more replicas.
        old.config_set("repl-diskless-sync-delay", 0)
        new.replicaof("NO", "ONE")
        new.replicaof("127.0.0.1", primary.port)
        process = case.start(url=relay.url)
        case.shared = process.proxy.get_token().get(timeout=5)  # fresh 1, on the primary

        def replicated() -> bool:
            keys = [k for k in old.keys(f"{PREFIX}*") if old.type(k) == b"string"]
            return bool(keys) and all(new.get(k) == old.get(k) for k in keys)

        wait_for(replicated, 10.0, "the replica to hold the primary's values")
        relay.switch(replica.port)
        new.replicaof("NO", "ONE")
        primary.kill()
    seen = [case.next_process(relay.url)]  # a process after the failover: the replicated one
    process.proxy.invalidate(case.shared).get(timeout=5)
    seen.append(case.label(process.proxy.get_token().get(timeout=5)))
    return StoreOutcome(
        tuple(seen), len(case.upstream.requests), case.next_process(relay.url), "store up"
    )


STORE_MARKET = actors.AppConfig(
    MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=STORE_BASE_URL
)


def run_bad_ticket(
    case: StoreCase, phase: str, mutate: Callable[[redis.Redis, str], object]
) -> StoreOutcome:
    """The shared app_ticket is bad: the app token is fetched with the ticket Feishu pushes
    again (which is shared in its place), never with the bad one."""
    assert case.stores().put_ticket(STORE_MARKET, "ticket-good-1")
    (key,) = text_keys(case.client, "*:ticket")
    mutate(case.client, key)

    def process() -> tuple[actors.TokenSystem, FunctionSource]:
        source = FunctionSource(
            lambda r: actors.Grant(f"a-{r.app_ticket}", 7200.0), resend=lambda _app: "pushed"
        )
        store = case.stores(failure_threshold=1, ticket_poll=0.2)
        case.systems.append(actors.TokenSystem.start(STORE_MARKET, store=store, source=source))
        return case.systems[-1], source

    faulted, source = process()
    sees = faulted.proxy.get_token(APP).get(timeout=5)
    later, later_source = process()
    next_token = later.proxy.get_token(APP).get(timeout=5)
    where = "from Redis" if not later_source.resends else "pushed again"
    return StoreOutcome(
        (f"{sees} (resends {len(source.resends)})",),
        len(source.requests),
        f"{next_token} {where}",
        health_label(faulted),
    )


BAD_VALUE_COLD = StoreOutcome(("fresh 1",), 1, "fresh 1 from Redis")
BAD_VALUE_WARM = StoreOutcome(("shared", "fresh 1"), 1, "fresh 1 from Redis")
# These bad values still hold the token the warm process invalidates: the invalidation's
# compare-and-delete removes them unread, so no fault is counted (nor needed).
SAME_TOKEN = {"a 30-day lifetime", "no lifetime and an issue time in the future"}


def bad_value_expected(name: str, phase: str) -> StoreOutcome:
    if phase == "cold":
        return BAD_VALUE_COLD
    return (
        dataclasses.replace(BAD_VALUE_WARM, health="store up")
        if name in SAME_TOKEN
        else BAD_VALUE_WARM
    )


STORE_CASES = [
    *(
        pytest.param(
            functools.partial(run_bad_value, mutate=mutate),
            phase,
            bad_value_expected(name, phase),
            id=f"value {name}-{phase}",
        )
        for name, mutate in BAD_VALUES.items()
        for phase in ("cold", "warm")
    ),
    *(
        pytest.param(
            functools.partial(run_bad_ticket, mutate=mutate),
            "cold",
            StoreOutcome(("a-pushed (resends 1)",), 1, "a-pushed from Redis"),
            id=f"ticket {name}-cold",
        )
        for name, mutate in BAD_TICKETS.items()
    ),
    pytest.param(
        run_wrong_type_of_another_app,
        "cold",
        StoreOutcome(("fresh 1", "shared"), 1, "shared from Redis"),
        id="wrong-type-key-of-another-app-cold",
    ),
    pytest.param(
        run_malformed_notices,
        "warm",
        StoreOutcome(("shared", "fresh 2"), 1, "fresh 2 from Redis", "store up"),
        id="malformed-notices-warm",
    ),
    pytest.param(
        run_notice_flood,
        "warm",
        StoreOutcome(("shared", "fresh 2"), 1, "fresh 2 from Redis", "store up"),
        id="notice-flood-warm",
    ),
]


@pytest.fixture
def store_case(
    client: redis.Redis,
    stores: Callable[..., actors.RedisStore],
    systems: list[actors.TokenSystem],
) -> StoreCase:
    return StoreCase(stores, systems, client)


@pytest.mark.parametrize(("run", "phase", "expected"), STORE_CASES)
def test_store_fault_matrix(
    run: Callable[..., StoreOutcome], phase: str, expected: StoreOutcome, store_case: StoreCase
) -> None:
    observed = run(store_case, phase=phase)

    assert observed == expected, f"observed {observed}"


def test_store_fault_matrix_failover_to_a_redis_whose_clock_is_slower(
    failover: tuple[RedisServer, RedisServer, Relay], store_case: StoreCase
) -> None:
    observed = run_failover_to_a_slower_clock(store_case, failover)

    # The newer token is written on the new primary and served from it: one request per refresh.
    assert observed == StoreOutcome(
        ("shared from Redis", "fresh 2"), 2, "fresh 2 from Redis", "store up"
    ), f"observed {observed}"
