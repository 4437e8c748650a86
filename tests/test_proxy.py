"""The caller-side handle: argument checks through the future, bounded state, stopped systems."""

from __future__ import annotations

from typing import Any

import pytest
import requests

import actors
from actors.testing import FunctionSource

APP = actors.AppConfig("cli_px", "secret")
MARKET = actors.AppConfig("cli_pm", "secret", app_type=actors.AppType.MARKETPLACE)


@pytest.mark.parametrize(
    "kwargs",
    [{"tenant_key": ["unhashable"]}, {"app_id": {"a": 1}}, {"app_id": 42}, {"tenant_key": 7}],
)
def test_a_bad_argument_type_fails_the_future_with_value_error(kwargs: dict[str, Any]) -> None:
    with actors.TokenSystem.start(MARKET, source=FunctionSource.constant()) as system:
        future = system.proxy.get_token(**kwargs)
        with pytest.raises(ValueError, match="must be a string"):
            future.get(timeout=5)


@pytest.mark.parametrize("apps", [None, 42, "cli_x"])
def test_start_without_apps_is_a_value_error(apps: Any) -> None:
    with pytest.raises(ValueError, match="AppConfig"):
        actors.TokenSystem.start(apps)


def test_a_session_that_is_not_a_requests_session_is_refused() -> None:
    with pytest.raises(ValueError, match=r"requests\.Session"):
        actors.TokenSystem.start(APP, session="x")  # type: ignore[arg-type]
    actors.TokenSystem.start(APP, session=requests.Session()).stop()


def test_settle_after_stop_raises_system_stopped() -> None:
    system = actors.TokenSystem.start(APP, source=FunctionSource.constant())
    system.stop()
    with pytest.raises(actors.SystemStoppedError):
        system.settle()


def test_every_call_after_stop_fails_with_system_stopped() -> None:
    system = actors.TokenSystem.start(APP, source=FunctionSource.constant())
    system.stop()
    for future in (
        system.proxy.get_token(),
        system.proxy.invalidate("t-x"),
        system.proxy.metrics(),
    ):
        with pytest.raises(actors.SystemStoppedError):
            future.get(timeout=5)


def test_keys_that_never_got_a_token_leave_no_state_behind() -> None:
    def fetch(request: actors.TokenRequest) -> actors.Grant | Exception:
        if request.kind is actors.TokenKind.APP:
            return actors.Grant("a-app", 7200.0)
        return actors.AuthError(10003, "invalid param: tenant_key")

    with actors.TokenSystem.start(MARKET, source=FunctionSource(fetch)) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        futures = [system.proxy.get_token(tenant_key=f"bogus-{i}") for i in range(2000)]
        for future in futures:
            with pytest.raises(actors.AuthError):
                future.get(timeout=10)
        system.settle()
        metrics = system.metrics()
    assert metrics.misses == 2000
    assert metrics.keys_tracked == 1  # only the app token, which is valid and shared


def test_the_proxys_memo_of_validated_arguments_is_bounded() -> None:
    from actors._proxy import _KEY_MEMO_SIZE

    with actors.TokenSystem.start(MARKET, source=FunctionSource.constant()) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        for i in range(_KEY_MEMO_SIZE + 10):
            system.proxy.get_token(tenant_key=f"t-{i}")
        memo = system.proxy._keys  # white box: the bound is the point of this test
        assert 0 < len(memo) <= _KEY_MEMO_SIZE


def test_invalidate_with_a_non_string_is_a_value_error() -> None:
    with (
        actors.TokenSystem.start(APP, source=FunctionSource.constant()) as system,
        pytest.raises(ValueError, match="token must be a string"),
    ):
        system.proxy.invalidate(None).get(timeout=5)  # type: ignore[arg-type]
