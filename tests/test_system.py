"""TokenSystem: start/stop, settle, multiple apps, and what reaches logs."""

from __future__ import annotations

import threading

import pykka
import pytest
from loguru import logger

import actors
from actors.testing import FakeFeishu
from tests.conftest import SECRET, SystemFactory, our_threads


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
