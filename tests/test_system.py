"""TokenSystem: start/stop, settle, multiple apps, what reaches logs, and health()."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pykka
import pytest
from loguru import logger

import actors
from actors.testing import FakeFeishu, FunctionSource
from tests.conftest import SECRET, SystemFactory, drive, our_threads
from tests.redis_server import RedisServer, free_port
from tests.stores.conftest import redis_server  # noqa: F401 - the store tests' real redis-server
from tests.test_proxy import PassThroughStore


def test_stop_resolves_pending_futures_and_leaves_no_thread_of_ours(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    before = set(our_threads())
    system = actors.TokenSystem.start(app)
    gate = server.hold("tenant")
    pending = [system.proxy.get_token() for _ in range(3)]
    assert gate.wait_for_waiting(1)
    stopper = threading.Thread(target=system.stop, kwargs={"timeout": 5.0})
    stopper.start()
    for future in pending:  # resolved by stop(), while the worker is still in its HTTP call
        with pytest.raises(actors.SystemStoppedError):
            future.get(timeout=5)
    gate.release()  # the worker's request returns; stop() can now join it
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    assert set(our_threads()) <= before
    with pytest.raises(actors.SystemStoppedError):
        system.proxy.get_token().get(timeout=1)
    system.stop()  # idempotent


def test_context_manager_stops_the_system(app: actors.AppConfig) -> None:
    with actors.TokenSystem.start(app) as system:
        assert system.proxy.get_token().get(timeout=5)
        ref = system.actor_ref
    assert not ref.is_alive()
    assert not [name for name in our_threads() if name.startswith("TokenActor")]


def test_stop_does_not_touch_other_actors_in_the_registry(app: actors.AppConfig) -> None:
    class Bystander(pykka.ThreadingActor):
        pass

    bystander = Bystander.start()
    try:
        actors.TokenSystem.start(app).stop()
        assert bystander.is_alive()
    finally:
        bystander.stop()


def test_constructing_a_system_directly_is_refused_in_favour_of_start(
    app: actors.AppConfig,
) -> None:
    with pytest.raises(TypeError, match=r"TokenSystem\.start\("):
        actors.TokenSystem(app)


def test_invalid_start_arguments_raise_value_error(app: actors.AppConfig) -> None:
    with pytest.raises(ValueError, match="at least one"):
        actors.TokenSystem.start([])
    with pytest.raises(ValueError, match="given twice"):
        actors.TokenSystem.start([app, app])
    with pytest.raises(ValueError, match="policy"):
        actors.TokenSystem.start(app, policy="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        actors.TokenSystem.start(app, clock=object())  # type: ignore[arg-type]


def test_next_due_is_the_prewarm_of_the_cached_token_and_advancing_to_it_refreshes(
    make_system: SystemFactory, clock: actors.ManualClock, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, prewarm_lead=600.0, jitter=0.1)
    assert system.next_due() is None  # nothing cached, nothing scheduled
    system.proxy.get_token().get(timeout=5)
    system.settle()
    due = system.next_due()
    assert due is not None
    expires_at = clock.now() + 7200.0  # the fake's default lifetime
    assert expires_at - 660.0 <= due <= expires_at - 540.0
    before = server.count("tenant")
    clock.advance(due - clock.now())
    system.settle()
    assert server.count("tenant") == before + 1  # the timer it named was the prewarm
    assert system.next_due() is not None and system.next_due() > due  # type: ignore[operator]


def test_settle_waits_for_fetches_in_flight(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.set_latency(0.05)
    system = make_system(app)
    future = system.proxy.get_token()
    system.settle()
    assert future.get(timeout=0)


def test_settle_times_out_while_a_fetch_hangs(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)
    gate = server.hold("tenant")
    system.proxy.get_token()
    try:
        with pytest.raises(TimeoutError):
            system.settle(timeout=0.2)
    finally:
        gate.release()


def test_one_system_serves_several_apps_without_mixing_tokens(
    make_system: SystemFactory, server: FakeFeishu
) -> None:
    server.add_app("cli_other", "other-secret")
    system = make_system(
        [
            actors.AppConfig("cli_test", SECRET, base_url=server.base_url),
            actors.AppConfig("cli_other", "other-secret", base_url=server.base_url),
        ]
    )
    first = system.proxy.get_token(app_id="cli_test").get(timeout=5)
    other = system.proxy.get_token(app_id="cli_other").get(timeout=5)
    app_token = system.proxy.get_token(actors.TokenKind.APP, app_id="cli_test").get(timeout=5)
    assert len({first, other, app_token}) == 3
    with pytest.raises(ValueError, match="app_id is required"):
        system.proxy.get_token().get(timeout=5)


def test_logs_mask_tokens_and_never_contain_secrets(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", format="{message} {extra}")
    logger.enable("actors")
    try:
        system = make_system(app)
        token = system.proxy.get_token().get(timeout=5)
        system.proxy.invalidate(token).get(timeout=5)
        system.settle()
        system.log_performance_metrics()
        wrong = make_system(actors.AppConfig("cli_test", "wrong-secret", base_url=server.base_url))
        with pytest.raises(actors.AuthError):
            wrong.proxy.get_token().get(timeout=5)
        wrong.settle()
    finally:
        logger.disable("actors")
        logger.remove(sink)
    text = "\n".join(lines)
    assert "token refreshed" in text
    assert "performance report" in text
    assert token not in text
    assert token[:4] + "…" + token[-2:] in text  # masked form, enough to correlate
    assert SECRET not in text
    assert "wrong-secret" not in text


def test_the_library_logs_nothing_unless_enabled(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE")
    try:
        system = make_system(app)
        system.proxy.get_token().get(timeout=5)
        system.log_performance_metrics()
    finally:
        logger.remove(sink)
    assert lines == []


def test_plain_tracebacks_leave_out_frame_locals() -> None:
    from actors._errors import plain_traceback

    def fail() -> None:
        token = "t-0123456789abcdef0123456789abcdef"
        raise RuntimeError(f"boom near a {len(token)}-char token")

    try:
        fail()
    except RuntimeError as exc:
        text = plain_traceback(exc)
    assert "RuntimeError: boom" in text
    assert "0123456789abcdef" not in text


def test_stop_interrupts_a_worker_blocked_in_an_upstream_read(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    before = set(our_threads())
    system = actors.TokenSystem.start(app)  # its own session: stop() may shut its sockets
    gate = server.hold("tenant")  # never released before stop(): the read would block 10 s
    pending = system.proxy.get_token()
    assert gate.wait_for_waiting(1)
    system.stop(timeout=5.0)
    with pytest.raises(actors.SystemStoppedError):
        pending.get(timeout=0)
    assert set(our_threads()) <= before


def test_an_injected_session_is_used_and_left_open(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    import requests

    session = requests.Session()
    adapters_before = dict(session.adapters)
    with actors.TokenSystem.start(app, session=session) as system:
        assert server.valid_token(system.proxy.get_token().get(timeout=5))
    assert dict(session.adapters) == adapters_before  # not re-mounted by the library
    response = session.post(
        server.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": app.app_id, "app_secret": app.app_secret},
        timeout=5,
    )
    assert response.json()["code"] == 0  # still usable: stop() closes only its own session


# --- health ------------------------------------------------------------------------------------

HEALTH_APP = actors.AppConfig("cli_health", "health-app-secret-value")
HEALTH_MARKET = actors.AppConfig(
    "cli_health_m", "health-market-secret-value", app_type=actors.AppType.MARKETPLACE
)
TOKEN_SHAPED = "t-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB"


class Upstream:
    """A source whose answers a test changes: ``errors[tenant_key]`` is raised for that key
    (None: a self-built tenant token), everything else is granted a token of its own."""

    def __init__(self) -> None:
        self.errors: dict[str | None, Exception] = {}
        self._numbers = itertools.count(1)

    def source(self) -> FunctionSource:
        def fetch(request: actors.TokenRequest) -> actors.Grant | Exception:
            if request.kind is actors.TokenKind.APP:
                return actors.Grant("a-health-app-token", 7200.0)
            error = self.errors.get(request.tenant_key)
            return error or actors.Grant(f"t-{next(self._numbers)}-{request.tenant_key}", 7200.0)

        return FunctionSource(fetch)


def start_market(upstream: Upstream, **policy: Any) -> actors.TokenSystem:
    system = actors.TokenSystem.start(
        HEALTH_MARKET,
        source=upstream.source(),
        clock=actors.ManualClock(),
        policy=actors.RefreshPolicy(seed=3, **policy),
    )
    system.proxy.set_app_ticket("ticket").get(timeout=5)
    return system


def test_a_running_system_with_nothing_failing_is_healthy() -> None:
    with actors.TokenSystem.start(HEALTH_APP, source=FunctionSource.constant()) as system:
        system.proxy.get_token().get(timeout=5)
        health = system.health()
    assert health == actors.SystemHealth(
        running=True,
        store=None,
        keys_failing=0,
        keys_failing_by_app={},
        last_refresh_error=None,
        last_refresh_error_age=None,
    )
    assert health.ok


def test_a_key_whose_refresh_failed_with_nothing_to_serve_fails_until_a_refresh_succeeds() -> None:
    upstream = Upstream()
    upstream.errors["tenant-bad"] = actors.AuthError(99991672, "no permission")
    with start_market(upstream) as system:
        system.proxy.get_token(tenant_key="tenant-good").get(timeout=5)
        with pytest.raises(actors.AuthError):
            system.proxy.get_token(tenant_key="tenant-bad").get(timeout=5)
        failing = system.health()
        del upstream.errors["tenant-bad"]
        system.proxy.get_token(tenant_key="tenant-bad").get(timeout=5)
        healed = system.health()

    assert (failing.running, failing.keys_failing, failing.ok) == (True, 1, False)
    assert dict(failing.keys_failing_by_app) == {HEALTH_MARKET.app_id: 1}
    assert failing.last_refresh_error is not None
    assert failing.last_refresh_error.startswith("AuthError: Feishu rejected")
    assert failing.last_refresh_error_age == 0.0  # on the system's (manual) clock
    assert (healed.keys_failing, dict(healed.keys_failing_by_app), healed.ok) == (0, {}, True)
    assert healed.last_refresh_error == failing.last_refresh_error  # the last error, kept


def test_a_key_serving_its_cached_token_while_its_refresh_fails_is_not_failing() -> None:
    upstream = Upstream()
    system = actors.TokenSystem.start(
        HEALTH_APP,
        source=upstream.source(),
        clock=(clock := actors.ManualClock()),
        policy=actors.RefreshPolicy(seed=3, max_attempts=2, retry_base=1.0, retry_cap=1.0),
    )
    with system:
        token = system.proxy.get_token().get(timeout=5)
        upstream.errors[None] = actors.UpstreamError(None, 503, 1)
        due = system.next_due()
        assert due is not None
        clock.advance(due - clock.now())  # the prewarm, which fails, and its retry
        for _ in range(5):
            system.settle()
            clock.advance(1.0)
        stale = system.health()
        assert system.proxy.get_token().get(timeout=5) == token  # still served
        clock.advance(7200.0)  # past its expiry: now nothing is left to serve
        with pytest.raises(actors.UpstreamError):
            drive(system, clock, system.proxy.get_token())
        expired = system.health()

    assert stale.keys_failing == 0
    assert stale.last_refresh_error is not None
    assert stale.last_refresh_error.startswith("UpstreamError: ")
    assert stale.last_refresh_error_age is not None and stale.last_refresh_error_age > 0
    assert expired.keys_failing == 1


def test_a_failing_key_nobody_asks_for_again_is_forgotten_after_idle_ttl() -> None:
    upstream = Upstream()
    upstream.errors["tenant-gone"] = actors.AuthError(99991672, "no permission")
    with start_market(upstream, idle_ttl=3600.0) as system:
        with pytest.raises(actors.AuthError):
            system.proxy.get_token(tenant_key="tenant-gone").get(timeout=5)
        clock = system.clock
        assert isinstance(clock, actors.ManualClock)
        clock.advance(3599.0)
        before = system.health().keys_failing
        clock.advance(1.0)
        after = system.health().keys_failing
    assert (before, after) == (1, 0)


def test_the_failing_keys_remembered_are_bounded() -> None:
    from actors._refresh import _FAILING_MAX

    upstream = Upstream()
    with start_market(upstream) as system:
        futures = []
        for i in range(_FAILING_MAX + 50):
            key = f"bogus-{i}"
            upstream.errors[key] = actors.AuthError(10003, "invalid param: tenant_key")
            futures.append(system.proxy.get_token(tenant_key=key))
        for future in futures:
            with pytest.raises(actors.AuthError):
                future.get(timeout=10)
        assert system.health().keys_failing == _FAILING_MAX


def test_health_never_shows_a_secret_or_a_token_a_source_put_in_its_error() -> None:
    secret = HEALTH_APP.app_secret
    assert secret is not None
    leaky = actors.AuthError(10014, f"echoed {secret} and app_secret={secret} with {TOKEN_SHAPED}")
    with actors.TokenSystem.start(HEALTH_APP, source=FunctionSource(lambda _r: leaky)) as system:
        with pytest.raises(actors.AuthError):
            system.proxy.get_token().get(timeout=5)
        health = system.health()
    assert health.last_refresh_error is not None
    assert health.last_refresh_error.startswith("AuthError: Feishu rejected")
    for text in (health.last_refresh_error, repr(health)):
        assert secret not in text
        assert TOKEN_SHAPED not in text


def test_the_health_future_and_coroutine_answer_what_the_system_does() -> None:
    upstream = Upstream()
    upstream.errors["tenant-bad"] = actors.AuthError(99991672, "no permission")
    with start_market(upstream) as system:
        with pytest.raises(actors.AuthError):
            system.proxy.get_token(tenant_key="tenant-bad").get(timeout=5)

        async def ask() -> actors.SystemHealth:
            return await system.proxy.ahealth()

        answers = [system.health(), system.proxy.health().get(timeout=5), asyncio.run(ask())]
    assert answers[0].keys_failing == 1
    assert answers[1:] == answers[:1] * 2


def test_a_stopped_system_reports_not_running_and_its_proxy_says_stopped() -> None:
    system = actors.TokenSystem.start(HEALTH_APP, source=FunctionSource.constant())
    system.stop()

    health = system.health()

    assert (health.running, health.ok, health.store, health.keys_failing) == (False, False, None, 0)
    with pytest.raises(actors.SystemStoppedError):
        system.proxy.health().get(timeout=5)
    with pytest.raises(actors.SystemStoppedError):
        asyncio.run(system.proxy.ahealth())


class BrokenHealthStore(PassThroughStore):
    """A store whose health() itself fails: a bug in someone's store."""

    def health(self) -> actors.StoreHealth:
        raise ConnectionError(f"cannot reach the store with {HEALTH_APP.app_secret}")


def test_a_store_whose_health_check_fails_is_reported_unreachable_without_raising() -> None:
    store = BrokenHealthStore()
    with actors.TokenSystem.start(HEALTH_APP, source=FunctionSource.constant(), store=store) as s:
        health = s.health()
    assert health.store == actors.StoreHealth(
        where="BrokenHealthStore",
        reachable=False,
        breaker_open=False,
        faults={},
        last_error="ConnectionError",
    )
    assert health.running and health.keys_failing == 0 and not health.ok
    with pytest.raises(actors.StoreUnavailableError, match="BrokenHealthStore"):
        actors.TokenSystem.start(HEALTH_APP, store=BrokenHealthStore(), require_store=True)


def test_require_store_needs_a_store() -> None:
    with pytest.raises(ValueError, match="require_store"):
        actors.TokenSystem.start(HEALTH_APP, require_store=True)


# --- health and require_store with a real redis-server ------------------------------------------


def test_health_says_whether_the_store_answers(
    redis_server: RedisServer,  # noqa: F811 - the fixture imported above
) -> None:
    live = actors.RedisStore(redis_server.url, prefix="health:")
    dead = actors.RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="health:")
    healths = []
    for store in (live, dead):
        with actors.TokenSystem.start(
            HEALTH_APP, source=FunctionSource.constant(), store=store
        ) as s:
            s.proxy.get_token().get(timeout=5)  # served either way
            healths.append(s.health())
    up, down = (h.store for h in healths)
    assert up is not None and down is not None
    assert (up.reachable, up.breaker_open, up.last_error) == (True, False, None)
    assert not down.reachable and down.last_error is not None
    assert healths[0].ok and not healths[1].ok
    assert all(h.keys_failing == 0 and h.running for h in healths)


def test_require_store_refuses_to_start_without_the_store_and_starts_nothing() -> None:
    before = sorted(our_threads())
    port = free_port()
    store = actors.RedisStore(f"redis://:hunter2-password@127.0.0.1:{port}/0", prefix="health:")
    try:
        with pytest.raises(actors.StoreUnavailableError) as info:
            actors.TokenSystem.start(
                HEALTH_APP, source=FunctionSource.constant(), store=store, require_store=True
            )
        assert sorted(our_threads()) == before
        assert isinstance(info.value, actors.TokenError)
        assert not info.value.health.reachable
        assert str(port) in str(info.value)
        assert "hunter2" not in str(info.value) + repr(info.value.health)
    finally:
        store.close()


def test_require_store_starts_when_the_store_answers(
    redis_server: RedisServer,  # noqa: F811 - the fixture imported above
) -> None:
    store = actors.RedisStore(redis_server.url, prefix="health:")
    with actors.TokenSystem.start(
        HEALTH_APP, source=FunctionSource.constant(), store=store, require_store=True
    ) as system:
        assert system.proxy.get_token().get(timeout=5) == "t-fake"
        assert system.health().ok
