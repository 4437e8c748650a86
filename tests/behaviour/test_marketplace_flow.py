"""The marketplace flow end to end, over real loopback HTTP: a tenant token for an app with no
app_ticket -> the system asks Feishu to resend it -> the fake server pushes the encrypted, signed
app_ticket event to the app's event endpoint -> ``actors.handle_event`` feeds it -> the get
returns a tenant token. And a push the endpoint must refuse feeds nothing and harms nothing."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, cast

import pytest

import actors
from actors.testing import FakeFeishu, app_ticket_event, encrypt_event, sign_event
from tests.conftest import MARKET_ID, MARKET_SECRET, SystemFactory

ENCRYPT_KEY = "flow-encrypt-key"
VERIFICATION_TOKEN = "flow-verification-token"
TIMEOUT = 10.0


class EventEndpoint(ThreadingHTTPServer):
    """An app's event URL, the stdlib way: each POST goes through ``handle_event``, whose dict is
    the JSON answer; an event it refuses is answered 400. ``encrypt_key`` and
    ``verification_token`` are the app's settings, changeable between pushes."""

    daemon_threads = True

    def __init__(self, system: actors.TokenSystem) -> None:
        super().__init__(("127.0.0.1", 0), _EventHandler)
        self.system = system
        self.encrypt_key = ENCRYPT_KEY
        self.verification_token = VERIFICATION_TOKEN
        self.refused: list[str] = []  # why each refused event was refused
        # A short poll interval keeps shutdown() quick.
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, name="event-endpoint"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/feishu/events"


class _EventHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        endpoint = cast(EventEndpoint, self.server)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            answer = actors.handle_event(
                endpoint.system,
                raw,
                headers=self.headers,  # http.server's own headers object, as is
                verification_token=endpoint.verification_token,
                encrypt_key=endpoint.encrypt_key,
            )
            status = 200
        except actors.EventError as exc:
            endpoint.refused.append(str(exc))
            answer, status = {"error": "event refused"}, 400
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def system(make_system: SystemFactory, market_app: actors.AppConfig) -> actors.TokenSystem:
    return make_system(market_app)  # no app_ticket yet


@pytest.fixture
def endpoint(system: actors.TokenSystem) -> Iterator[EventEndpoint]:
    server = EventEndpoint(system)
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.thread.join(timeout=TIMEOUT)


@pytest.mark.parametrize("schema", ["1.0", "2.0"])
def test_a_tenant_token_arrives_through_a_pushed_encrypted_signed_app_ticket(
    system: actors.TokenSystem,
    server: FakeFeishu,
    endpoint: EventEndpoint,
    schema: Literal["1.0", "2.0"],
) -> None:
    pusher = server.push_events_to(
        endpoint.url,
        verification_token=VERIFICATION_TOKEN,
        encrypt_key=ENCRYPT_KEY,
        schema=schema,
    )

    token = system.proxy.get_token(tenant_key="tk-1").get(timeout=TIMEOUT)

    assert token.startswith("t-") and server.valid_token(token)
    # The ticket is fed before the endpoint answers the push: wait for that answer.
    assert pusher.wait_for_pushes(1, timeout=TIMEOUT)
    [push] = pusher.pushes
    assert push.ok and json.loads(push.answer) == {}
    assert server.count("resend") == 1 and system.metrics().ticket_resends == 1
    assert endpoint.refused == []
    [tenant_request] = [r for r in server.requests if r.kind == "tenant"]
    assert tenant_request.tenant_key == "tk-1"


@pytest.mark.parametrize(
    "case",
    [
        ("encrypt_key", "not-the-apps-key", "decrypt"),
        ("verification_token", "another-token", "verification token"),
    ],
    ids=["wrong-encrypt-key", "wrong-verification-token"],
)
def test_a_refused_push_feeds_nothing_and_the_endpoint_survives_for_the_next_one(
    system: actors.TokenSystem,
    server: FakeFeishu,
    endpoint: EventEndpoint,
    case: tuple[str, str, str],
) -> None:
    setting, value, why = case
    pusher = server.push_events_to(
        endpoint.url, verification_token=VERIFICATION_TOKEN, encrypt_key=ENCRYPT_KEY
    )
    setattr(endpoint, setting, value)  # the endpoint is misconfigured

    waiting = system.proxy.get_token(tenant_key="tk-1")
    assert pusher.wait_for_pushes(1, timeout=TIMEOUT)

    [refused] = pusher.pushes
    assert refused.status == 400 and refused.answer == '{"error": "event refused"}'
    assert len(endpoint.refused) == 1 and why in endpoint.refused[0]
    # No ticket was fed: the get fails once the system's wait for a ticket runs out.
    system.settle()
    clock = system.clock
    assert isinstance(clock, actors.ManualClock)
    clock.advance(system.policy.ticket_wait)
    system.settle()
    with pytest.raises(actors.AppTicketError):
        waiting.get(timeout=TIMEOUT)
    assert server.count("app") == 0

    setattr(endpoint, setting, ENCRYPT_KEY if setting == "encrypt_key" else VERIFICATION_TOKEN)
    token = system.proxy.get_token(tenant_key="tk-1").get(timeout=TIMEOUT)

    assert server.valid_token(token) and endpoint.thread.is_alive()
    assert pusher.wait_for_pushes(2, timeout=TIMEOUT)
    assert [p.status for p in pusher.pushes] == [400, 200]
    assert server.count("resend") == 2


def test_handle_event_takes_http_servers_header_object(system: actors.TokenSystem) -> None:
    # http.server's self.headers is an email.message.Message: not a Mapping, and iterating it
    # yields bare names. handle_event once unpacked those into pairs and failed with a plain
    # ValueError for every event a stdlib endpoint passed on.
    event = app_ticket_event(next(iter(system.apps)), "tk-h", verification_token=VERIFICATION_TOKEN)
    raw = encrypt_event(event, ENCRYPT_KEY)
    lines = "".join(f"{k}: {v}\r\n" for k, v in sign_event(raw, ENCRYPT_KEY).items())
    headers = http.client.parse_headers(io.BytesIO(f"{lines}Host: x\r\n\r\n".encode()))

    answer = actors.handle_event(
        system,
        raw,
        headers=headers,
        verification_token=VERIFICATION_TOKEN,
        encrypt_key=ENCRYPT_KEY,
    )

    assert answer == {}
    bad = raw.replace(b'"}', b'A"}')  # tampered after signing
    with pytest.raises(actors.EventError):
        actors.handle_event(system, bad, headers=headers, encrypt_key=ENCRYPT_KEY)


@pytest.mark.parametrize("as_dict", [False, True], ids=["raw", "parsed"])
def test_with_an_encrypt_key_an_event_in_clear_is_refused(
    system: actors.TokenSystem, as_dict: bool
) -> None:
    # Once an Encrypt Key is set Feishu encrypts every callback: a clear app_ticket, unsigned
    # when the endpoint passes no headers, comes from someone without the key.
    app_id = next(iter(system.apps))
    forged = app_ticket_event(app_id, "forged", verification_token=VERIFICATION_TOKEN)
    body = forged if as_dict else json.dumps(forged)

    with pytest.raises(actors.EventError, match="not encrypted"):
        actors.handle_event(system, body, encrypt_key=ENCRYPT_KEY)


def delivery(ticket: str, made_at: float) -> tuple[bytes, dict[str, str]]:
    """An app_ticket event made at ``made_at`` (Unix seconds), delivered now: encrypted and
    signed as Feishu does (a late redelivery is signed afresh)."""
    event = app_ticket_event(MARKET_ID, ticket, verification_token=VERIFICATION_TOKEN)
    event["ts"] = f"{made_at:.6f}"
    raw = encrypt_event(event, ENCRYPT_KEY)
    return raw, sign_event(raw, ENCRYPT_KEY)


def test_a_late_delivery_in_another_process_never_puts_an_older_ticket_back_in_redis(
    server: FakeFeishu,
    stores: Callable[..., actors.RedisStore],
    systems: list[actors.TokenSystem],
) -> None:
    # Processes A and B each run an event endpoint on one Redis; C starts later and takes its
    # app_ticket from Redis.
    market = actors.AppConfig(
        MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=server.base_url
    )
    policy = actors.RefreshPolicy(ticket_wait=2.0)
    a, b, c = (actors.TokenSystem.start(market, policy=policy, store=stores()) for _ in "abc")
    systems += [a, b, c]
    older = server.issue_ticket(MARKET_ID)
    newer = server.issue_ticket(MARKET_ID)  # Feishu's next push: the older one dies
    made = time.time() - 60

    def feed(system: actors.TokenSystem, ticket: str, made_at: float) -> None:
        raw, headers = delivery(ticket, made_at)
        answer = actors.handle_event(
            system,
            raw,
            headers=headers,
            verification_token=VERIFICATION_TOKEN,
            encrypt_key=ENCRYPT_KEY,
        )
        assert answer == {}

    feed(a, newer, made)
    feed(b, older, made - 3600)  # delayed an hour, and B never saw the newer one

    assert server.valid_token(c.proxy.get_token(actors.TokenKind.APP).get(timeout=TIMEOUT))
    assert (server.count("app"), server.count("resend")) == (1, 0)  # Redis held the newer one
