"""The Feishu auth client classifies every outcome of one attempt."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time
from typing import Any

import pytest
import requests

import actors
from actors._source import TokenRequest
from actors.feishu import _protocol as feishu
from actors.feishu._client import FeishuAuthClient
from actors.feishu._sockets import AbortableAdapter
from actors.testing import FakeFeishu, Reply
from tests.conftest import APP_ID, MARKET_SECRET, SECRET, SystemFactory, drive

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


# --- hardening: every attempt ends by its deadline, whatever the upstream sends ----------------

TOKEN = "t-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB"  # token-shaped, as Feishu spells them


def test_a_drip_fed_body_fails_at_the_attempts_deadline(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    # Each byte arrives well within the read timeout, so only an overall deadline ends this:
    # the whole body would take about 4 s, the deadline (connect + read) is 2 s.
    server.script("tenant", Reply.drip(Reply.ok(TOKEN, 7200), interval=0.05))
    client = FeishuAuthClient(requests.Session(), timeout=(1.0, 1.0))
    with pytest.raises(actors.UpstreamError, match="deadline") as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.status == 200
    assert TOKEN not in str(info.value)


def test_a_drip_fed_key_frees_its_fetch_slot_at_the_deadline(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    # One fetch slot: the app token's fetch queues behind the dripping tenant token's.
    system = make_system(app, max_attempts=1, max_concurrent_fetches=1, request_timeout=(0.5, 0.5))
    server.script("tenant", Reply.drip(Reply.ok(TOKEN, 7200), interval=0.05))
    dripping = system.proxy.get_token()
    queued = system.proxy.get_token(actors.TokenKind.APP)
    with pytest.raises(actors.UpstreamError, match="deadline"):
        dripping.get(timeout=10)
    assert queued.get(timeout=10).startswith("a-")


def test_drip_fed_headers_fail_at_the_deadline_with_a_session_of_our_own(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    # The status line and headers (padded to ~400 bytes) would take about 20 s; the deadline is
    # 1 s. Only the adapter's watchdog, which shuts the socket down, can end a header read.
    padded = dataclasses.replace(Reply.ok(TOKEN, 7200), headers=(("x-padding", "p" * 300),))
    server.script("tenant", Reply.drip(padded, interval=0.05, head=True))
    session = requests.Session()
    session.mount("http://", AbortableAdapter())
    client = FeishuAuthClient(session, timeout=(0.5, 0.5))
    started = time.monotonic()
    with pytest.raises(actors.UpstreamError, match="deadline"):
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert time.monotonic() - started < 10.0  # wide margin: the headers alone take 20 s


def test_an_oversized_body_is_transient(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.http(200, "x" * 200_000))
    with pytest.raises(actors.UpstreamError, match="larger than"):
        client.fetch(TokenRequest(app=app, kind=TENANT))


def test_a_connection_reset_mid_body_is_transient(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.reset_mid_body())
    with pytest.raises(actors.UpstreamError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert type(info.value) is actors.UpstreamError


def test_connections_are_reused_after_a_fully_read_answer(
    app: actors.AppConfig, server: FakeFeishu
) -> None:
    session = requests.Session()
    session.mount("http://", AbortableAdapter())
    client = FeishuAuthClient(session, timeout=(1.0, 2.0))
    for _ in range(3):
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert server.connections == 1


def test_an_html_429_is_rate_limiting_with_the_reset_header(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.gateway_rate_limited(reset=3))
    with pytest.raises(actors.RateLimitedError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.retry_after == 3.0
    assert info.value.status == 429


def test_a_huge_rate_limit_reset_is_capped(
    client: FeishuAuthClient, app: actors.AppConfig, server: FakeFeishu
) -> None:
    server.script("tenant", Reply.rate_limited(reset=10_000_000_000))
    with pytest.raises(actors.RateLimitedError) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    assert info.value.retry_after == feishu.MAX_RETRY_AFTER


def _echo(secret: str, extra: str = "") -> str:
    # What a proxy echoing the request body back might say.
    return f'bad request {{"app_id":"cli_test","app_secret":"{secret}"{extra}}} seen {TOKEN}'


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.code(10014, _echo(SECRET), status=400), actors.AuthError),
        (Reply.code(1234, _echo(SECRET), status=500), actors.UpstreamError),
    ],
)
def test_upstream_text_never_carries_the_secret_or_a_token(
    client: FeishuAuthClient,
    app: actors.AppConfig,
    server: FakeFeishu,
    reply: Reply,
    error: type[Exception],
) -> None:
    server.script("tenant", reply)
    with pytest.raises(error) as info:
        client.fetch(TokenRequest(app=app, kind=TENANT))
    text = f"{info.value} {info.value!r} {vars(info.value)}"
    assert SECRET not in text and TOKEN not in text
    assert "bad request" in text  # the rest of the message is kept


def test_upstream_text_never_carries_the_requests_ticket_or_app_token(
    client: FeishuAuthClient, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    ticket, app_token = "tk-0123456789abcdef0123", "a-short7"
    server.script("app", Reply.code(1234, f"echo {ticket} {MARKET_SECRET}", status=500))
    server.script("tenant", Reply.code(1234, f"echo app_access_token={app_token}", status=500))
    with pytest.raises(actors.UpstreamError) as app_info:
        client.fetch(TokenRequest(app=market_app, kind=APP, app_ticket=ticket))
    with pytest.raises(actors.UpstreamError) as tenant_info:
        client.fetch(
            TokenRequest(app=market_app, kind=TENANT, app_token=app_token, tenant_key="tk1")
        )
    assert ticket not in str(app_info.value) and MARKET_SECRET not in str(app_info.value)
    assert app_token not in str(tenant_info.value)


@pytest.mark.parametrize(
    "expire", [1e10, 1e400, float("nan"), float("inf"), float("-inf"), -5, 0], ids=repr
)
def test_an_unusable_expire_fails_the_get_and_the_system_recovers(
    make_system: SystemFactory,
    clock: actors.ManualClock,
    app: actors.AppConfig,
    server: FakeFeishu,
    expire: float,
) -> None:
    system = make_system(app, max_attempts=3)
    server.script("tenant", *[Reply.ok(TOKEN, expire)] * 3)
    with pytest.raises(actors.UpstreamError) as info:
        drive(system, clock, system.proxy.get_token())
    assert info.value.attempts == 3 and "unusable token lifetime" in str(info.value)
    assert TOKEN not in str(info.value)
    server.script("tenant", Reply.ok("t-fine-token", 7200))
    assert drive(system, clock, system.proxy.get_token()) == "t-fine-token"


def test_an_adapter_answering_without_a_stream_is_read_too(app: actors.AppConfig) -> None:
    class Canned(requests.adapters.BaseAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
            response = requests.Response()
            response.status_code = 200
            response._content = (
                b'{"code":0,"msg":"ok","tenant_access_token":"t-canned","expire":60}'
            )
            response.request = request
            return response

        def close(self) -> None:
            return

    session = requests.Session()
    session.mount("http://", Canned())
    grant = FeishuAuthClient(session, timeout=(1.0, 2.0)).fetch(TokenRequest(app=app, kind=TENANT))
    assert (grant.token, grant.expire) == ("t-canned", 60)


def test_a_redirect_from_the_token_endpoint_is_refused_and_the_secret_goes_nowhere_else() -> None:
    received: list[bytes] = []

    class Foreign(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            body = (
                b'{"code":0,"msg":"ok","tenant_access_token":"t-foreign-token-0001","expire":7200}'
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    foreign = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Foreign)

    class Own(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.2:{foreign.server_port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    own = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Own)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (foreign, own)]
    for thread in threads:
        thread.start()
    try:
        app = actors.AppConfig(APP_ID, SECRET, base_url=f"http://127.0.0.1:{own.server_port}")
        with requests.Session() as session:
            client = FeishuAuthClient(session, timeout=(2.0, 2.0))
            with pytest.raises(actors.UpstreamError, match="redirect refused") as info:
                client.fetch(TokenRequest(app=app, kind=TENANT))
        assert info.value.status == 307 and SECRET not in str(info.value)
        assert received == []  # the foreign host saw nothing, let alone the secret
    finally:
        for server in (foreign, own):
            server.shutdown()
            server.server_close()
