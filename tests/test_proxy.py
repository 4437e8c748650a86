"""The caller-side handle: argument checks through the future, bounded state, stopped systems."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import requests

import actors
from actors.stores import Store
from actors.testing import FunctionSource
from tests.test_fork import in_child

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


class PassThroughStore(Store):
    """A store that shares nothing: it serves through the system's own source and records each
    app_ticket handed to it with its made_at."""

    def __init__(self) -> None:
        self.tickets: list[tuple[str, float | None]] = []
        self._closed = False

    def wrap(self, source: actors.TokenSource, policy: actors.RefreshPolicy) -> Any:
        return source

    def attach(self, on_notice: Callable[[str], object]) -> None:
        pass

    def put_ticket(
        self, app: actors.AppConfig | str, ticket: str, *, made_at: float | None = None
    ) -> bool:
        self.tickets.append((ticket, made_at))
        return True

    def close(self, *, timeout: float = 2.0) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


def test_the_store_is_handed_each_tickets_creation_time_to_order_it_for_every_process() -> None:
    store = PassThroughStore()
    with actors.TokenSystem.start(MARKET, source=FunctionSource.constant(), store=store) as system:
        system.proxy.set_app_ticket("newer", made_at=1_700_000_100.0).get(timeout=5)
        system.proxy.set_app_ticket("older", made_at=1_700_000_000.0).get(timeout=5)
        asyncio.run(system.proxy.aset_app_ticket("untimed"))
    # The store judges for itself: what it holds may be newer than anything this process saw.
    assert store.tickets == [
        ("newer", 1_700_000_100.0),
        ("older", 1_700_000_000.0),
        ("untimed", None),
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_the_newest_ticket_not_the_last_handed_over() -> None:
    def fetch(request: actors.TokenRequest) -> actors.Grant:
        return actors.Grant(f"a-{request.app_ticket}", 7200.0)

    with actors.TokenSystem.start(MARKET, source=FunctionSource(fetch)) as system:
        system.proxy.set_app_ticket("newer", made_at=1_700_000_100.0).get(timeout=5)
        system.proxy.set_app_ticket("older", made_at=1_700_000_000.0).get(timeout=5)

        def child() -> str:
            token = system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)
            system.stop(timeout=5)
            return token

        code, text = in_child(child)
    assert (code, text) == (0, "a-newer")
