"""Tests of the test support: the embedded fake Feishu server, driven over real HTTP with
``requests``, and the function-backed token source."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from actors._clock import ManualClock
from actors._config import AppConfig, AppType, TokenKind
from actors._errors import AuthError
from actors._source import Grant, TokenRequest, TokenSource
from actors.testing import FakeFeishu, FunctionSource, RecordedRequest, Reply
from tests.fake_apps import AUTH, SELF, STORE, serve_two_apps

APP_INTERNAL = AUTH + "app_access_token/internal"
TENANT_INTERNAL = AUTH + "tenant_access_token/internal"
APP_STORE = AUTH + "app_access_token"
TENANT_STORE = AUTH + "tenant_access_token"
RESEND = AUTH + "app_ticket/resend"

# Waits below are on events and gates; this only bounds a hang if the server misbehaves.
TIMEOUT = 2.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeFeishu]:
    with serve_two_apps(clock) as fake:
        yield fake


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def post(server: FakeFeishu, path: str, body: object) -> requests.Response:
    return requests.post(server.base_url + path, json=body, timeout=TIMEOUT)


def app_token_for_store(server: FakeFeishu) -> str:
    ticket = server.issue_ticket(STORE["app_id"])
    reply = post(server, APP_STORE, {**STORE, "app_ticket": ticket}).json()
    assert reply["code"] == 0
    return str(reply["app_access_token"])


def test_self_built_app_and_tenant_tokens_are_issued_with_the_full_lifetime(
    server: FakeFeishu,
) -> None:
    app = post(server, APP_INTERNAL, SELF).json()
    tenant = post(server, TENANT_INTERNAL, SELF).json()

    assert app["code"] == 0
    assert app["app_access_token"].startswith("a-")
    assert len(app["app_access_token"]) == 2 + 32
    assert app["expire"] == 7200
    assert tenant["tenant_access_token"].startswith("t-")
    assert tenant["expire"] == 7200
    assert server.valid_token(app["app_access_token"])
    assert server.valid_token(tenant["tenant_access_token"])
    assert not server.valid_token("t-never-issued")


def test_same_token_is_returned_while_thirty_minutes_or_more_remain(
    server: FakeFeishu, clock: ManualClock
) -> None:
    first = post(server, TENANT_INTERNAL, SELF).json()
    clock.advance(7200 - 1800)
    again = post(server, TENANT_INTERNAL, SELF).json()

    assert again["tenant_access_token"] == first["tenant_access_token"]
    assert again["expire"] == 1800


def test_new_token_is_issued_under_thirty_minutes_and_the_old_one_stays_valid(
    server: FakeFeishu, clock: ManualClock
) -> None:
    old = post(server, TENANT_INTERNAL, SELF).json()["tenant_access_token"]
    clock.advance(7200 - 1799)
    fresh = post(server, TENANT_INTERNAL, SELF).json()

    assert fresh["tenant_access_token"] != old
    assert fresh["expire"] == 7200
    assert server.valid_token(old)
    clock.advance(1799)
    assert not server.valid_token(old)
    assert server.valid_token(fresh["tenant_access_token"])


def test_wrong_secret_is_rejected_with_10014_and_an_unknown_app_with_10003(
    server: FakeFeishu,
) -> None:
    wrong = post(server, TENANT_INTERNAL, {**SELF, "app_secret": "nope"})
    unknown = post(server, TENANT_INTERNAL, {"app_id": "cli_ghost", "app_secret": "x"})
    wrong_kind = post(server, TENANT_INTERNAL, STORE)

    assert (wrong.status_code, wrong.json()["code"]) == (400, 10014)
    assert unknown.json()["code"] == 10003
    assert wrong_kind.json()["code"] == 10003


def test_a_body_that_is_not_json_is_rejected_with_9499(server: FakeFeishu) -> None:
    reply = requests.post(server.base_url + TENANT_INTERNAL, data=b"{oops", timeout=TIMEOUT)

    assert (reply.status_code, reply.json()["code"]) == (400, 9499)
    assert server.count("tenant") == 1


def test_marketplace_app_token_needs_the_current_ticket(server: FakeFeishu) -> None:
    assert post(server, APP_STORE, STORE).json()["code"] == 10012
    old_ticket = server.issue_ticket(STORE["app_id"])
    new_ticket = server.issue_ticket(STORE["app_id"])

    stale = post(server, APP_STORE, {**STORE, "app_ticket": old_ticket}).json()
    current = post(server, APP_STORE, {**STORE, "app_ticket": new_ticket}).json()

    assert (stale["code"], stale["msg"]) == (10012, "app_ticket is invalid")
    assert current["code"] == 0
    assert current["expire"] == 7200
    assert server.valid_token(current["app_access_token"])


def test_marketplace_tenant_tokens_are_issued_per_tenant_key(server: FakeFeishu) -> None:
    app_token = app_token_for_store(server)

    one = post(server, TENANT_STORE, {"app_access_token": app_token, "tenant_key": "tk1"}).json()
    two = post(server, TENANT_STORE, {"app_access_token": app_token, "tenant_key": "tk2"}).json()

    assert one["code"] == two["code"] == 0
    assert one["tenant_access_token"] != two["tenant_access_token"]
    assert server.count("tenant", app_id=STORE["app_id"], tenant_key="tk1") == 1


def test_stale_app_token_is_rejected_with_99991664(server: FakeFeishu) -> None:
    app_token = app_token_for_store(server)
    server.rotate(STORE["app_id"])

    reply = post(server, TENANT_STORE, {"app_access_token": app_token, "tenant_key": "tk1"})

    assert reply.json()["code"] == 99991664
    assert not server.valid_token(app_token)


def test_rotate_forgets_tokens_so_the_next_request_mints_new_ones(server: FakeFeishu) -> None:
    before = post(server, TENANT_INTERNAL, SELF).json()["tenant_access_token"]
    server.rotate()
    after = post(server, TENANT_INTERNAL, SELF).json()["tenant_access_token"]

    assert after != before
    assert not server.valid_token(before)
    assert server.valid_token(after)


def test_resend_pushes_a_new_ticket_after_answering(server: FakeFeishu) -> None:
    pushed: list[tuple[str, str]] = []
    arrived = threading.Event()

    def on_resend(app_id: str, ticket: str) -> None:
        pushed.append((app_id, ticket))
        arrived.set()

    server.on_ticket_resend = on_resend
    reply = post(server, RESEND, STORE).json()

    assert reply == {"code": 0, "msg": "ok"}
    assert arrived.wait(TIMEOUT)
    app_id, ticket = pushed[0]
    assert app_id == STORE["app_id"]
    assert post(server, APP_STORE, {**STORE, "app_ticket": ticket}).json()["code"] == 0


def test_resend_without_a_listener_only_records_the_request(server: FakeFeishu) -> None:
    ticket = server.issue_ticket(STORE["app_id"])

    assert post(server, RESEND, STORE).json()["code"] == 0
    assert server.count("resend", app_id=STORE["app_id"]) == 1
    assert post(server, APP_STORE, {**STORE, "app_ticket": ticket}).json()["code"] == 0


def test_rate_limited_reply_is_a_429_with_the_reset_header(server: FakeFeishu) -> None:
    server.script("tenant", Reply.rate_limited(reset=3))

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.status_code == 429
    assert reply.headers["x-ogw-ratelimit-reset"] == "3"
    assert reply.json()["code"] == 99991400


def test_http_reply_serves_an_html_gateway_page(server: FakeFeishu) -> None:
    server.script("any", Reply.http(502))

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.status_code == 502
    assert reply.headers["Content-Type"] == "text/html"
    assert "502 Bad Gateway" in reply.text


def test_truncated_reply_is_cut_json(server: FakeFeishu) -> None:
    server.script("tenant", Reply.truncated())

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.status_code == 200
    assert reply.text == '{"code": 0, "msg": "ok", "tenant_access_tok'
    with pytest.raises(requests.JSONDecodeError):
        reply.json()


def test_disconnect_reply_makes_requests_raise_connection_error(server: FakeFeishu) -> None:
    server.script("tenant", Reply.disconnect())

    with pytest.raises(requests.ConnectionError):
        post(server, TENANT_INTERNAL, SELF)
    assert post(server, TENANT_INTERNAL, SELF).json()["code"] == 0


def test_the_server_counts_the_connections_it_accepted(server: FakeFeishu) -> None:
    with requests.Session() as session:  # one kept-alive connection for both requests
        for _ in range(2):
            session.post(server.base_url + TENANT_INTERNAL, json=SELF, timeout=TIMEOUT)
    assert server.connections == 1
    post(server, TENANT_INTERNAL, SELF)  # requests.post: a session, and a connection, of its own
    assert server.connections == 2


def test_ok_reply_returns_exactly_the_given_token(server: FakeFeishu) -> None:
    server.script("app", Reply.ok("a-fixed", 5000))
    server.script("tenant", Reply.ok("t-fixed", 4000), Reply.ok("t-fixed", 3999))

    app = post(server, APP_INTERNAL, SELF).json()
    first = post(server, TENANT_INTERNAL, SELF).json()
    second = post(server, TENANT_INTERNAL, SELF).json()

    assert (app["app_access_token"], app["expire"]) == ("a-fixed", 5000)
    assert (first["tenant_access_token"], first["expire"]) == ("t-fixed", 4000)
    assert (second["tenant_access_token"], second["expire"]) == ("t-fixed", 3999)
    assert server.valid_token("t-fixed")


def test_scripted_replies_match_their_filters_and_normal_handling_resumes_after(
    server: FakeFeishu,
) -> None:
    app_token = app_token_for_store(server)
    server.script("tenant", Reply.code(99991400, "slow down"), tenant_key="tk2")

    def tenant(key: str) -> int:
        body = {"app_access_token": app_token, "tenant_key": key}
        return int(post(server, TENANT_STORE, body).json()["code"])

    assert tenant("tk1") == 0
    assert tenant("tk2") == 99991400
    assert tenant("tk2") == 0


def test_held_request_is_counted_and_answered_after_release(
    server: FakeFeishu, pool: ThreadPoolExecutor
) -> None:
    gate = server.hold("tenant", app_id=SELF["app_id"])
    pending = pool.submit(post, server, TENANT_INTERNAL, SELF)

    assert gate.wait_for_waiting(1, timeout=TIMEOUT)
    assert server.count("tenant") == 1
    assert server.in_flight == 1
    assert not pending.done()
    assert post(server, APP_INTERNAL, SELF).json()["code"] == 0  # other kinds pass
    gate.release()

    assert pending.result(TIMEOUT).json()["code"] == 0
    assert gate.waiting == 0


def test_tenant_latency_only_slows_that_tenant(
    server: FakeFeishu, pool: ThreadPoolExecutor
) -> None:
    app_token = app_token_for_store(server)
    server.set_latency(30.0, tenant_key="slow")
    arrived = server.hold("tenant", tenant_key="slow")  # holds come before latency
    slow_body = {"app_access_token": app_token, "tenant_key": "slow"}
    slow = pool.submit(post, server, TENANT_STORE, slow_body)
    assert arrived.wait_for_waiting(1, timeout=TIMEOUT)
    arrived.release()

    fast = post(server, TENANT_STORE, {"app_access_token": app_token, "tenant_key": "fast"})

    assert fast.json()["code"] == 0
    assert not slow.done()
    assert server.in_flight == 1
    server.stop()  # cuts the 30 s latency short
    assert slow.result(TIMEOUT).json()["code"] == 0


def test_max_in_flight_records_peak_concurrency(
    server: FakeFeishu, pool: ThreadPoolExecutor
) -> None:
    gate = server.hold()
    pending: list[Future[requests.Response]] = [
        pool.submit(post, server, TENANT_INTERNAL, SELF) for _ in range(3)
    ]
    assert gate.wait_for_waiting(3, timeout=TIMEOUT)
    assert server.max_in_flight == 3
    gate.release()
    assert all(f.result(TIMEOUT).json()["code"] == 0 for f in pending)

    assert server.in_flight == 0
    assert server.max_in_flight == 3
    server.reset_stats()
    assert (server.max_in_flight, server.requests) == (0, [])


def test_stop_releases_held_requests_and_is_idempotent(pool: ThreadPoolExecutor) -> None:
    server = FakeFeishu().start()
    server.add_app(SELF["app_id"], SELF["app_secret"])
    gate = server.hold()
    pending = pool.submit(post, server, TENANT_INTERNAL, SELF)
    assert gate.wait_for_waiting(1, timeout=TIMEOUT)

    server.stop()
    server.stop()

    assert pending.result(TIMEOUT).json()["code"] == 0
    with pytest.raises(requests.ConnectionError):
        post(server, TENANT_INTERNAL, SELF)


def test_recorded_requests_never_contain_secrets_or_tickets(server: FakeFeishu) -> None:
    ticket = server.issue_ticket(STORE["app_id"])
    post(server, TENANT_INTERNAL, SELF)
    post(server, APP_STORE, {**STORE, "app_ticket": ticket})

    recorded = server.requests
    text = repr(recorded) + repr(server)

    assert [r.kind for r in recorded] == ["tenant", "app"]
    assert recorded[0] == RecordedRequest(TENANT_INTERNAL, "tenant", "cli_self", None, 1000.0)
    for secret in (SELF["app_secret"], STORE["app_secret"], ticket):
        assert secret not in text


def test_unknown_kinds_are_refused(server: FakeFeishu) -> None:
    with pytest.raises(ValueError, match="kind"):
        server.script("nobody", Reply.code(1))
    with pytest.raises(ValueError, match="kind"):
        server.hold("nobody")


def test_outage_answers_every_token_request_with_503_until_lifted(server: FakeFeishu) -> None:
    server.set_outage(True)
    assert post(server, TENANT_INTERNAL, SELF).status_code == 503
    assert post(server, APP_INTERNAL, SELF).status_code == 503
    server.set_outage(False)
    assert post(server, TENANT_INTERNAL, SELF).json()["code"] == 0


def test_failure_rate_fails_about_that_share_of_requests_reproducibly(server: FakeFeishu) -> None:
    def statuses() -> list[int]:
        server.set_failure_rate(0.3, seed=11)
        return [post(server, TENANT_INTERNAL, SELF).status_code for _ in range(100)]

    first = statuses()
    assert 15 <= first.count(503) <= 45
    assert statuses() == first  # same seed, same failures
    server.set_failure_rate(0.0)
    assert post(server, TENANT_INTERNAL, SELF).status_code == 200
    with pytest.raises(ValueError, match="failure rate"):
        server.set_failure_rate(1.5)


def test_expires_at_tells_when_a_token_stops_being_accepted(
    server: FakeFeishu, clock: ManualClock
) -> None:
    token = post(server, TENANT_INTERNAL, SELF).json()["tenant_access_token"]
    assert server.expires_at(token) == clock.now() + 7200
    assert server.expires_at("t-unknown") is None


def test_max_in_flight_per_key_counts_concurrent_requests_for_one_key(
    server: FakeFeishu, pool: ThreadPoolExecutor
) -> None:
    gate = server.hold("tenant")
    futures = [pool.submit(post, server, TENANT_INTERNAL, SELF) for _ in range(2)]
    other = pool.submit(post, server, APP_INTERNAL, SELF)
    assert other.result(TIMEOUT).status_code == 200
    assert gate.wait_for_waiting(2, timeout=TIMEOUT)
    gate.release()
    for future in futures:
        assert future.result(TIMEOUT).status_code == 200
    assert server.max_in_flight_per_key == 2
    server.reset_stats()
    assert server.max_in_flight_per_key == 0


# Fault replies (for the client's fault matrix)


def raw_exchange(server: FakeFeishu, path: str, body: bytes) -> socket.socket:
    """A connection that has sent one POST; the caller reads the answer as it arrives."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_drip_reply_sends_the_body_a_byte_at_a_time(server: FakeFeishu) -> None:
    server.script("tenant", Reply.drip(Reply.ok("t-dripped", 7000), interval=0.02))

    with requests.post(
        server.base_url + TENANT_INTERNAL, json=SELF, timeout=TIMEOUT, stream=True
    ) as reply:
        assert reply.status_code == 200  # the status line and headers came at once
        first = reply.raw.read1(1024)
        rest = reply.raw.read()

    body = json.loads(first + rest)
    assert len(first) < len(first + rest)  # not all at once: each byte waits its interval
    assert (body["tenant_access_token"], body["expire"]) == ("t-dripped", 7000)


def test_drip_reply_can_drip_the_status_line_and_headers_too(server: FakeFeishu) -> None:
    server.script("tenant", Reply.drip(Reply.http(502), interval=0.05, head=True))

    with raw_exchange(server, TENANT_INTERNAL, b"{}") as sock:
        first = sock.recv(1024)
        assert 0 < len(first) < len(b"HTTP/1.1 502 Bad Gateway\r\n")
    reply = post(server, TENANT_INTERNAL, SELF)  # the script is used up: normal answers again
    assert reply.json()["code"] == 0


def test_a_drip_ends_when_the_server_stops(server: FakeFeishu) -> None:
    server.script("tenant", Reply.drip(Reply.http(502), interval=60.0, head=True))
    with raw_exchange(server, TENANT_INTERNAL, b"{}") as sock:
        assert sock.recv(1) == b"H"
        server.stop()
        assert sock.recv(1024) == b""  # closed within the timeout, not after 60 s a byte


def test_reset_mid_body_breaks_the_read_after_part_of_the_body(server: FakeFeishu) -> None:
    server.script("tenant", Reply.reset_mid_body(after=5))

    with requests.post(
        server.base_url + TENANT_INTERNAL, json=SELF, timeout=TIMEOUT, stream=True
    ) as reply:
        assert reply.status_code == 200
        assert int(reply.headers["Content-Length"]) > 5
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            reply.content  # noqa: B018  # reading the body is the point
    assert post(server, TENANT_INTERNAL, SELF).json()["code"] == 0


def test_gateway_rate_limited_reply_is_an_html_429_with_the_reset_header(
    server: FakeFeishu,
) -> None:
    server.script("tenant", Reply.gateway_rate_limited(reset=3))

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.status_code == 429
    assert reply.headers["x-ogw-ratelimit-reset"] == "3"
    assert reply.headers["Content-Type"] == "text/html"
    with pytest.raises(requests.JSONDecodeError):
        reply.json()


def test_http_reply_takes_headers(server: FakeFeishu) -> None:
    server.script("tenant", Reply.http(503, "down", headers={"Retry-After": "9"}))
    reply = post(server, TENANT_INTERNAL, SELF)
    assert (reply.status_code, reply.text, reply.headers["Retry-After"]) == (503, "down", "9")


def test_raw_reply_sends_exactly_its_body(server: FakeFeishu) -> None:
    body = '{"code":0,"msg":"ok","tenant_access_token":"t-x","expire":1e400}'
    server.script("tenant", Reply.raw(body))

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.text == body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["expire"] == math.inf


@pytest.mark.parametrize(
    ("expire", "spelled"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (1e10, "10000000000.0"), (-5, "-5")],
)
def test_ok_reply_writes_any_expire_as_pythons_json_does(
    server: FakeFeishu, expire: float, spelled: str
) -> None:
    server.script("tenant", Reply.ok("t-odd", expire))

    reply = post(server, TENANT_INTERNAL, SELF)

    assert reply.text.endswith(f'"expire":{spelled}}}')


def test_fault_replies_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        Reply.drip(Reply.http(502), interval=0)
    with pytest.raises(ValueError, match="after"):
        Reply.reset_mid_body(after=-1)


def test_the_in_process_adapter_serves_drips_at_once_and_raises_for_resets(
    server: FakeFeishu,
) -> None:
    session = requests.Session()
    session.mount(server.base_url, server.adapter())
    url = server.base_url + TENANT_INTERNAL
    server.script(
        "tenant", Reply.drip(Reply.ok("t-at-once", 7000), interval=60.0), Reply.reset_mid_body()
    )

    with session.post(url, json=SELF, stream=True) as reply:  # streamed like a socket's
        assert json.loads(reply.raw.read1(4096))["tenant_access_token"] == "t-at-once"
    with pytest.raises(requests.ConnectionError, match="reset"):
        session.post(url, json=SELF)
    assert session.post(url, json=SELF).json()["code"] == 0


# FunctionSource

SELF_APP = AppConfig(SELF["app_id"], SELF["app_secret"])
STORE_APP = AppConfig(STORE["app_id"], STORE["app_secret"], app_type=AppType.MARKETPLACE)


def tenant_request(tenant_key: str | None = None) -> TokenRequest:
    app = STORE_APP if tenant_key is not None else SELF_APP
    return TokenRequest(app=app, kind=TokenKind.TENANT, tenant_key=tenant_key, app_token="a-x")


def test_function_source_is_a_token_source() -> None:
    source: TokenSource = FunctionSource.constant()

    assert isinstance(source, TokenSource)


def test_function_source_grants_what_the_function_returns_and_records_the_request() -> None:
    source = FunctionSource(lambda req: Grant(f"t-{req.tenant_key}", 3600.0))
    request = tenant_request("tk1")

    grant = source.fetch(request)

    assert (grant.token, grant.expire) == ("t-tk1", 3600.0)
    assert source.requests == [request]
    assert source.requests[0].key.tenant_key == "tk1"


def test_function_source_raises_an_exception_the_function_returns() -> None:
    source = FunctionSource(lambda req: AuthError(10014, "app secret invalid"))

    with pytest.raises(AuthError) as raised:
        source.fetch(tenant_request())

    assert raised.value.code == 10014
    assert len(source.requests) == 1


def test_function_source_records_a_request_before_the_function_answers_it() -> None:
    seen_by_the_function: list[list[TokenRequest]] = []

    def fetch(request: TokenRequest) -> Grant:
        seen_by_the_function.append(source.requests)
        return Grant("t-x", 60.0)

    source = FunctionSource(fetch)
    request = tenant_request()
    source.fetch(request)

    assert seen_by_the_function == [[request]]


def test_constant_function_source_grants_the_same_token_to_every_request() -> None:
    source = FunctionSource.constant(token="t-same", expire=100.0)

    grants = {source.fetch(tenant_request(key)) for key in (None, "tk1", "tk2")}

    assert grants == {Grant("t-same", 100.0)}
    assert FunctionSource.constant().fetch(tenant_request()) == Grant("t-fake", 7200.0)


def test_function_source_records_resends_and_passes_them_to_the_resend_function() -> None:
    pushed: list[AppConfig] = []
    source = FunctionSource(lambda req: Grant("t", 1.0), resend=pushed.append)

    source.resend_ticket(STORE_APP)
    source.resend_ticket(STORE_APP)

    assert source.resends == [STORE["app_id"], STORE["app_id"]]
    assert pushed == [STORE_APP, STORE_APP]
    assert source.requests == []


def test_function_source_without_a_resend_function_only_records_the_resend() -> None:
    source = FunctionSource.constant()

    source.resend_ticket(STORE_APP)

    assert source.resends == [STORE["app_id"]]


def test_function_source_records_every_request_of_concurrent_workers(
    pool: ThreadPoolExecutor,
) -> None:
    source = FunctionSource.constant()
    keys = [f"tk{i}" for i in range(200)]

    list(pool.map(lambda key: source.fetch(tenant_request(key)), keys))

    assert sorted(r.tenant_key or "" for r in source.requests) == sorted(keys)
