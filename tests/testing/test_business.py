"""Tests of the fake server's business routes and event push, driven over real loopback HTTP
with ``requests`` (the library's integrations are tested in test_requests, test_lark and
test_marketplace_flow)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from actors._clock import ManualClock
from actors.testing import (
    EventPusher,
    FakeFeishu,
    Reply,
    app_ticket_event,
    encrypt_event,
    sign_event,
)
from tests.fake_apps import AUTH, SELF, STORE, serve_two_apps

CHATS = "/open-apis/im/v1/chats"
MESSAGES = "/open-apis/im/v1/messages"
USER_TOKEN = "/open-apis/authen/v1/oidc/access_token"
KEY = "push-encrypt-key"
VERIFY = "push-verification-token"
TIMEOUT = 5.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeFeishu]:
    with serve_two_apps(clock) as fake:
        yield fake


def token_of(server: FakeFeishu, kind: str = "tenant") -> str:
    path = AUTH + f"{kind}_access_token/internal"
    reply = requests.post(server.base_url + path, json=SELF, timeout=TIMEOUT).json()
    return str(reply[f"{kind}_access_token"])


def get(server: FakeFeishu, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(server.base_url + path, headers=headers, timeout=TIMEOUT)


def post(
    server: FakeFeishu, path: str, token: str | None, body: object, **params: str
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(
        server.base_url + path, json=body, params=params, headers=headers, timeout=TIMEOUT
    )


TEXT = {"receive_id": "oc_1", "msg_type": "text", "content": '{"text":"hi"}'}
CODE = {"grant_type": "authorization_code", "code": "c-1"}


# --- business routes ---------------------------------------------------------------------------


def test_business_routes_answer_a_valid_token_with_data(server: FakeFeishu) -> None:
    tenant, app = token_of(server), token_of(server, "app")

    chats = get(server, CHATS, tenant)
    message = post(server, MESSAGES, tenant, TEXT, receive_id_type="chat_id")
    user = post(server, USER_TOKEN, app, CODE)

    for response in (chats, message, user):
        assert response.status_code == 200
        assert response.json()["code"] == 0 and response.json()["msg"] == "success"
    assert chats.json()["data"]["items"][0]["chat_id"].startswith("oc_")
    data = message.json()["data"]
    assert data["message_id"].startswith("om_") and data["chat_id"] == "oc_1"
    assert data["body"]["content"] == TEXT["content"]
    assert data["sender"]["id"] == SELF["app_id"]
    assert user.json()["data"]["access_token"].startswith("u-")


def test_business_calls_are_recorded_with_the_token_headers_and_body(server: FakeFeishu) -> None:
    tenant = token_of(server)
    server.reset_stats()

    get(server, CHATS, tenant)
    post(server, MESSAGES, tenant, TEXT, receive_id_type="chat_id")

    listed, sent = server.requests
    assert (listed.kind, listed.method, listed.path, listed.token) == (
        "business",
        "GET",
        CHATS,
        tenant,
    )
    assert (listed.app_id, listed.tenant_key, listed.at) == (SELF["app_id"], None, 1000.0)
    assert listed.header("AUTHORIZATION") == f"Bearer {tenant}" and listed.body == b""
    assert (sent.method, sent.query) == ("POST", "receive_id_type=chat_id")
    assert json.loads(sent.body) == TEXT
    assert server.count("business", app_id=SELF["app_id"]) == 2


def test_token_requests_keep_no_body_and_now_record_their_headers(server: FakeFeishu) -> None:
    token_of(server)
    [request] = server.requests
    assert request.body == b"" and request.token is None
    assert request.header("content-type") == "application/json"
    assert SELF["app_secret"] not in repr(request)


@pytest.mark.parametrize(
    ("path", "token", "code"),
    [
        (CHATS, None, 99991661),
        (CHATS, "t-never-issued", 99991663),
        (CHATS, "app", 99991663),  # an app token on a tenant route
        (CHATS, "garbage", 99991671),
        (USER_TOKEN, "t-never-issued", 99991664),
        (USER_TOKEN, "tenant", 99991664),  # a tenant token on an app route
        (USER_TOKEN, None, 99991661),
    ],
)
def test_a_missing_wrong_or_unknown_token_gets_feishus_code_with_http_400(
    server: FakeFeishu, path: str, token: str | None, code: int
) -> None:
    if token in ("app", "tenant"):
        token = token_of(server, token)
    response = post(server, path, token, CODE) if path == USER_TOKEN else get(server, path, token)

    assert response.status_code == 400
    assert response.json()["code"] == code and "access token" in response.json()["msg"]


def test_a_rotated_or_expired_token_is_refused_and_a_new_one_works(
    server: FakeFeishu, clock: ManualClock
) -> None:
    stale = token_of(server)
    server.rotate()
    assert get(server, CHATS, stale).json()["code"] == 99991663
    fresh = token_of(server)
    assert fresh != stale and get(server, CHATS, fresh).json()["code"] == 0

    expires_at = server.expires_at(fresh)
    assert expires_at is not None
    clock.advance(expires_at - clock.now())
    assert get(server, CHATS, fresh).json()["code"] == 99991663


def test_invalid_token_answers_can_come_with_http_200(server: FakeFeishu) -> None:
    server.business.set_invalid_status(200)

    response = get(server, CHATS, "t-never-issued")

    assert response.status_code == 200 and response.json()["code"] == 99991663
    with pytest.raises(ValueError, match="status"):
        server.business.set_invalid_status(42)


def test_a_message_needs_its_receive_id_type_and_fields(server: FakeFeishu) -> None:
    tenant = token_of(server)

    no_type = post(server, MESSAGES, tenant, TEXT)
    no_text = post(server, MESSAGES, tenant, {"receive_id": "oc_1"}, receive_id_type="chat_id")
    not_json = requests.post(
        server.base_url + MESSAGES + "?receive_id_type=chat_id",
        data=b"<xml/>",
        headers={"Authorization": f"Bearer {tenant}"},
        timeout=TIMEOUT,
    )

    for response in (no_type, no_text, not_json):
        assert response.status_code == 400 and response.json()["code"] == 99992402
    assert "msg_type" in no_text.json()["msg"]


def test_business_calls_take_scripted_replies_in_order(server: FakeFeishu) -> None:
    tenant = token_of(server)
    server.script(
        "business",
        Reply.http(502),
        Reply.code(99991672, "Access denied. One of the scopes is required", status=400),
        Reply.code(99991663, "invalid", status=400),
        Reply.code(99991663, "invalid", status=400),
    )

    answers = [get(server, CHATS, tenant) for _ in range(5)]

    assert answers[0].status_code == 502 and "Bad Gateway" in answers[0].text
    assert [a.json()["code"] for a in answers[1:]] == [99991672, 99991663, 99991663, 0]


def test_business_scripts_and_holds_match_the_tokens_app(server: FakeFeishu) -> None:
    tenant = token_of(server)
    server.script("business", Reply.code(1, "other app"), app_id="cli_other")
    assert get(server, CHATS, tenant).json()["code"] == 0  # not for this app: left queued

    gate = server.hold("business", app_id=SELF["app_id"])
    result: list[requests.Response] = []
    worker = threading.Thread(target=lambda: result.append(get(server, CHATS, tenant)))
    worker.start()
    assert gate.wait_for_waiting(1, timeout=TIMEOUT)
    token_of(server)  # token requests pass a business hold
    gate.release()
    worker.join(timeout=TIMEOUT)
    assert result[0].json()["code"] == 0


def test_a_token_route_answers_only_post(server: FakeFeishu) -> None:
    response = requests.get(server.base_url + AUTH + "tenant_access_token/internal", timeout=5)
    assert response.status_code == 400 and "access_token" not in response.text
    [request] = server.requests
    assert (request.kind, request.method) == ("unknown", "GET")


def test_the_business_kind_is_known_to_script_and_hold(server: FakeFeishu) -> None:
    server.script("business", Reply.code(1))
    server.hold("business").release()
    with pytest.raises(ValueError, match="business"):
        server.script("businesses", Reply.code(1))


# --- events: encryption, signature, payloads ----------------------------------------------------


def decrypt(raw: bytes, key: str) -> dict[str, Any]:
    """The documented scheme, written out independently of the library."""
    data = base64.b64decode(json.loads(raw)["encrypt"])
    cipher = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(data[:16]))
    decryptor = cipher.decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return cast(dict[str, Any], json.loads(unpadder.update(padded) + unpadder.finalize()))


def test_encrypt_event_follows_the_documented_scheme_with_a_random_iv() -> None:
    payload = {"type": "event_callback", "event": {"app_ticket": "tk"}}

    first, second = encrypt_event(payload, KEY), encrypt_event(payload, KEY)

    assert decrypt(first, KEY) == decrypt(second, KEY) == payload
    assert first != second  # a fresh IV each time
    with pytest.raises(ValueError, match="encrypt_key"):
        encrypt_event(payload, "")


def test_sign_event_is_sha256_of_timestamp_nonce_key_and_body() -> None:
    headers = sign_event(b'{"encrypt":"x"}', KEY, timestamp="1700000000", nonce="n-1")

    expected = hashlib.sha256(b"1700000000n-1" + KEY.encode() + b'{"encrypt":"x"}').hexdigest()
    assert headers == {
        "X-Lark-Request-Timestamp": "1700000000",
        "X-Lark-Request-Nonce": "n-1",
        "X-Lark-Signature": expected,
    }
    fresh = sign_event(b"{}", KEY)
    assert fresh["X-Lark-Request-Timestamp"].isdigit() and fresh["X-Lark-Request-Nonce"]


def test_app_ticket_events_in_both_schemas() -> None:
    v1 = app_ticket_event("cli_x", "tk-1", verification_token=VERIFY)
    v2 = app_ticket_event("cli_x", "tk-1", verification_token=VERIFY, schema="2.0")

    assert (v1["type"], v1["token"]) == ("event_callback", VERIFY)
    assert v1["event"] == {"type": "app_ticket", "app_id": "cli_x", "app_ticket": "tk-1"}
    assert v2["schema"] == "2.0" and v2["header"]["event_type"] == "app_ticket"
    assert v2["header"]["token"] == VERIFY
    assert v2["event"] == {"app_id": "cli_x", "app_ticket": "tk-1"}
    with pytest.raises(ValueError, match="schema"):
        app_ticket_event("cli_x", "tk", verification_token=VERIFY, schema="3.0")  # type: ignore[arg-type]


# --- event push ---------------------------------------------------------------------------------


class Capture(ThreadingHTTPServer):
    """An event URL that records each POST's body and headers and answers a fixed status."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.status = 200
        self.seen: list[tuple[bytes, dict[str, str]]] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/events"


class _CaptureHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        capture = cast(Capture, self.server)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        capture.seen.append((raw, dict(self.headers.items())))
        self.send_response(capture.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def capture() -> Iterator[Capture]:
    endpoint = Capture()
    endpoint.thread.start()
    yield endpoint
    endpoint.shutdown()
    endpoint.server_close()
    endpoint.thread.join(timeout=TIMEOUT)


def resend(server: FakeFeishu, app: dict[str, str] = STORE) -> None:
    reply = requests.post(server.base_url + AUTH + "app_ticket/resend", json=app, timeout=5)
    assert reply.json()["code"] == 0


def test_a_resend_pushes_an_encrypted_signed_app_ticket_to_the_url(
    server: FakeFeishu, capture: Capture
) -> None:
    pusher = server.push_events_to(capture.url, verification_token=VERIFY, encrypt_key=KEY)

    resend(server)

    assert pusher.wait_for_pushes(1, timeout=TIMEOUT)
    [(raw, headers)] = capture.seen
    timestamp, nonce = headers["X-Lark-Request-Timestamp"], headers["X-Lark-Request-Nonce"]
    signed = hashlib.sha256((timestamp + nonce + KEY).encode() + raw).hexdigest()
    assert headers["X-Lark-Signature"] == signed
    event = decrypt(raw, KEY)
    assert event["token"] == VERIFY and event["event"]["app_id"] == STORE["app_id"]
    ticket = event["event"]["app_ticket"]
    app_request = {**STORE, "app_ticket": ticket}
    answer = requests.post(server.base_url + AUTH + "app_access_token", json=app_request, timeout=5)
    assert answer.json()["code"] == 0  # the pushed ticket is the server's current one
    [push] = pusher.pushes
    assert push.ok and push.app_id == STORE["app_id"] and push.error is None
    assert KEY not in repr(pusher) and VERIFY not in repr(pusher)


def test_without_an_encrypt_key_the_event_goes_in_clear_and_unsigned(
    server: FakeFeishu, capture: Capture
) -> None:
    pusher = server.push_events_to(capture.url, verification_token=VERIFY, schema="2.0")

    resend(server)

    assert pusher.wait_for_pushes(1, timeout=TIMEOUT)
    [(raw, headers)] = capture.seen
    assert json.loads(raw)["header"]["token"] == VERIFY
    assert "X-Lark-Signature" not in headers


def test_the_in_process_callback_and_the_push_both_get_the_ticket(
    server: FakeFeishu, capture: Capture
) -> None:
    called: list[tuple[str, str]] = []
    done = threading.Event()

    def callback(app_id: str, ticket: str) -> None:
        called.append((app_id, ticket))
        done.set()

    server.on_ticket_resend = callback
    pusher = server.push_events_to(capture.url, verification_token=VERIFY, encrypt_key=KEY)

    resend(server)

    assert done.wait(TIMEOUT) and pusher.wait_for_pushes(1, timeout=TIMEOUT)
    [(app_id, ticket)] = called
    assert app_id == STORE["app_id"]
    assert decrypt(capture.seen[0][0], KEY)["event"]["app_ticket"] == ticket


def test_pushes_go_to_the_apps_own_url_and_failures_are_recorded(
    server: FakeFeishu, capture: Capture
) -> None:
    server.add_app("cli_store2", "store2-secret", marketplace=True)
    capture.status = 500
    other = server.push_events_to(
        capture.url, verification_token=VERIFY, encrypt_key=KEY, app_id="cli_store2"
    )
    unreachable = server.push_events_to(
        "http://127.0.0.1:9/nothing-listens-here", verification_token=VERIFY
    )

    resend(server, {"app_id": "cli_store2", "app_secret": "store2-secret"})
    resend(server)

    assert other.wait_for_pushes(1, timeout=TIMEOUT)
    assert unreachable.wait_for_pushes(1, timeout=TIMEOUT)
    assert [(p.app_id, p.status, p.ok) for p in other.pushes] == [("cli_store2", 500, False)]
    [failed] = unreachable.pushes
    assert failed.status is None and not failed.ok and failed.error
    assert failed.app_id == STORE["app_id"]


def test_an_event_pusher_refuses_an_unknown_schema() -> None:
    with pytest.raises(ValueError, match="schema"):
        EventPusher("http://127.0.0.1:9/", verification_token=VERIFY, schema="9")  # type: ignore[arg-type]
