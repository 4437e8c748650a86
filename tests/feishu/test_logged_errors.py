"""An error a caller logs with frame locals shows no credential and no whole token.

loguru's ``logger.exception`` with its defaults (``backtrace=True, diagnose=True``) prints the
variables of every frame in the traceback, and Sentry captures frame locals the same way: an
error handed to a caller must carry none of the worker's frames (where the request body holds
the app_secret, the app_ticket or the app token), nor exceptions chained to it that do.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Iterator

import pykka
import pytest
import requests
from loguru import logger

import actors
from actors._source import TokenRequest
from actors.feishu._client import FeishuAuthClient
from actors.testing import FakeFeishu, Reply
from tests.conftest import MARKET_ID, MARKET_SECRET, SECRET, forward_tickets

# Scripted, so the test can look for it without ever holding it in a local of its own frame.
APP_TOKEN = "a-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB"


@pytest.fixture
def sink() -> Iterator[io.StringIO]:
    """A loguru sink with loguru's own defaults for ``logger.add``: backtrace and diagnose."""
    text = io.StringIO()
    handler = logger.add(text, level="ERROR", backtrace=True, diagnose=True)
    yield text
    logger.remove(handler)


def _caught(future: pykka.Future[str]) -> BaseException:
    """The error ``future.get()`` raises, logged as a caller would log it."""
    try:
        future.get(timeout=10)
    except actors.TokenError as exc:
        logger.exception("could not get a token")
        return exc
    raise AssertionError("the get did not fail")


def _with_locals(error: BaseException) -> str:
    """The traceback as Sentry-like tools see it: every frame's locals, chained errors too."""
    described = traceback.TracebackException.from_exception(error, capture_locals=True)
    return "".join(described.format())


def test_a_logged_auth_error_shows_the_callers_frames_but_not_the_app_secret(
    server: FakeFeishu, app: actors.AppConfig, sink: io.StringIO
) -> None:
    server.script("tenant", Reply.code(10003, "invalid param", status=400))
    with actors.TokenSystem.start(app) as system:
        error = _caught(system.proxy.get_token())
    assert isinstance(error, actors.AuthError) and error.code == 10003
    logged, described = sink.getvalue(), _with_locals(error)
    assert "could not get a token" in logged and "AuthError" in logged
    assert "_caught" in described  # the caller's own frames are there
    for text in (logged, described):
        assert SECRET not in text
        assert "actors/feishu" not in text and "_upstream.py" not in text


def test_a_logged_marketplace_failure_shows_no_secret_ticket_or_app_token(
    server: FakeFeishu, market_app: actors.AppConfig, sink: io.StringIO
) -> None:
    server.script("app", Reply.ok(APP_TOKEN, 7200), app_id=MARKET_ID)
    # The tenant step carries the app token; Feishu refuses it for good.
    server.script("tenant", Reply.code(10003, "invalid param", status=400))
    with actors.TokenSystem.start(market_app) as system:
        forward_tickets(server, system)
        error = _caught(system.proxy.get_token(tenant_key="tk1"))
    assert isinstance(error, actors.AuthError)
    logged, described = sink.getvalue(), _with_locals(error)
    for text in (logged, described):
        assert MARKET_SECRET not in text and APP_TOKEN not in text
        assert "tk-" not in text  # the fake's tickets
        assert "actors/feishu" not in text and "_upstream.py" not in text


@pytest.mark.parametrize("status", [400, None], ids=["refused", "unreachable"])
def test_an_error_the_client_raises_holds_no_frame_that_saw_the_request_body(
    server: FakeFeishu, status: int | None
) -> None:
    # The client used on its own (a shared store wraps it, and may log what it raises).
    if status is None:
        server.stop()  # nothing listens: requests fails inside urllib3, whose frames hold the body
    else:
        server.script("tenant", Reply.code(10014, "app secret invalid", status=status))
    client = FeishuAuthClient(requests.Session(), timeout=(1.0, 2.0))
    app = actors.AppConfig("cli_test", SECRET, base_url=server.base_url)
    request = TokenRequest(app=app, kind=actors.TokenKind.TENANT)
    with pytest.raises(actors.TokenError) as info:
        client.fetch(request)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert SECRET not in _with_locals(info.value)


def test_callers_of_one_failed_fetch_each_get_an_error_of_their_own(
    server: FakeFeishu, app: actors.AppConfig
) -> None:
    gate = server.hold("tenant")
    server.script("tenant", Reply.code(10003, "invalid param", status=400))
    with actors.TokenSystem.start(app) as system:
        first, second = system.proxy.get_token(), system.proxy.get_token()
        assert gate.wait_for_waiting(1)
        gate.release()
        errors = [_caught_quietly(first), _caught_quietly(second)]
    # Raising one sets its __traceback__ to that caller's frames: the other must not see them.
    assert errors[0] is not errors[1]
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])


def _caught_quietly(future: pykka.Future[str]) -> BaseException:
    try:
        future.get(timeout=10)
    except actors.TokenError as exc:
        return exc
    raise AssertionError("the get did not fail")
