"""The Feishu auth client classifies every outcome of one attempt."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests

import actors
from actors._client import FeishuAuthClient
from actors._source import TokenRequest
from actors.testing import FakeFeishu, Reply

from .conftest import SECRET

TENANT = actors.TokenKind.TENANT
APP = actors.TokenKind.APP


@pytest.fixture
def client() -> FeishuAuthClient:
    return FeishuAuthClient(requests.Session(), timeout=(1.0, 2.0))


def test_self_built_tenant_and_app_tokens_are_granted(
    client: FeishuAuthClient, app: actors.AppConfig
) -> None:
    tenant = client.fetch(TokenRequest(app=app, kind=TENANT))
    app_token = client.fetch(TokenRequest(app=app, kind=APP))
    assert tenant.token.startswith("t-")
    assert app_token.token.startswith("a-")
    assert 0 < tenant.expire <= 7200


def test_grant_repr_does_not_show_the_token(
    client: FeishuAuthClient, app: actors.AppConfig
) -> None:
    grant = client.fetch(TokenRequest(app=app, kind=TENANT))
    assert grant.token not in repr(grant)


@pytest.mark.parametrize("code", [10003, 10014, 99991543])
def test_permanent_codes_raise_auth_error(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu, code: int
) -> None:
    server.script("tenant", Reply.code(code, "bad credentials", status=400))
    with pytest.raises(actors.AuthError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.code == code


def test_wrong_secret_is_an_auth_error_that_does_not_echo_the_secret(server: FakeFeishu) -> None:
    wrong = actors.AppConfig("cli_test", "wrong-secret-123", base_url=server.base_url)
    client = FeishuAuthClient(requests.Session(), timeout=(1.0, 2.0))
    with pytest.raises(actors.AuthError) as info:
        client.fetch(TokenRequest(app=wrong, kind=TENANT))
    assert info.value.code == 10014
    assert "wrong-secret-123" not in str(info.value)


def test_rate_limit_carries_the_reset_header(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.rate_limited(reset=7))
    with pytest.raises(actors.RateLimitedError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.retry_after == 7.0
    assert info.value.status == 429


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply.http(502), 502),
        (Reply.http(200, "<html>maintenance</html>"), 200),
        (Reply.truncated(), 200),
        (Reply.code(1234, "surprise", status=500), 500),
    ],
)
def test_gateway_pages_truncated_json_and_unknown_codes_are_transient(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu, reply: Reply, status: int
) -> None:
    server.script("tenant", reply)
    with pytest.raises(actors.UpstreamError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert type(info.value) is actors.UpstreamError
    assert info.value.status == status
    assert info.value.attempts == 1


def test_a_success_body_without_a_token_is_transient(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.code(0, "ok"))
    with pytest.raises(actors.UpstreamError, match="without a usable"):
        client.fetch(TokenRequest(app=app, kind=TENANT))


def test_a_dropped_connection_is_transient(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.disconnect())
    with pytest.raises(actors.UpstreamError):
        client.fetch(TokenRequest(app=app, kind=TENANT))


def test_connection_refused_is_transient(client: FeishuAuthClient) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = actors.AppConfig("cli_test", SECRET, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(actors.UpstreamError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.status is None


def test_read_timeout_is_transient(app: actors.AppConfig, server: FakeFeishu) -> None:
    gate = server.hold("tenant")
    client = FeishuAuthClient(requests.Session(), timeout=(1.0, 0.2))
    try:
        with pytest.raises(actors.UpstreamError, match="timed out"):
            client.fetch(TokenRequest(app=app, kind=TENANT))
    finally:
        gate.release()


def test_marketplace_app_token_without_ticket_never_calls_feishu(
    client: FeishuAuthClient, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    with pytest.raises(actors.AppTicketError):
        client.fetch(TokenRequest(app=market_app, kind=APP, app_ticket=None))
    assert server.count() == 0


def test_marketplace_two_step_flow_and_stale_ticket(
    client: FeishuAuthClient, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    with pytest.raises(actors.AppTicketError, match="rejected"):
        client.fetch(TokenRequest(app=market_app, kind=APP, app_ticket="stale-ticket"))
    ticket = server.issue_ticket(market_app.app_id)
    app_token = client.fetch(TokenRequest(app=market_app, kind=APP, app_ticket=ticket))
    tenant = client.fetch(
        TokenRequest(app=market_app, kind=TENANT, app_token=app_token.token, tenant_key="tk1")
    )
    assert tenant.token.startswith("t-")


def test_every_call_has_a_connect_and_read_timeout(app: actors.AppConfig) -> None:
    seen: list[dict[str, Any]] = []

    class RecordingSession(requests.Session):
        def post(self, url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
            seen.append(kwargs)
            raise requests.ConnectionError("recorded")

    client = FeishuAuthClient(RecordingSession(), timeout=(3.05, 10.0))
    for call in (
        lambda: client.fetch(TokenRequest(app=app, kind=TENANT)),
        lambda: client.fetch(TokenRequest(app=app, kind=APP)),
        lambda: client.resend_ticket(app),
    ):
        with pytest.raises(actors.UpstreamError):
            call()
    assert [kw["timeout"] for kw in seen] == [(3.05, 10.0)] * 3
