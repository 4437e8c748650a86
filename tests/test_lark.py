"""``actors.lark``: the official SDK (``lark-oapi``) in manual-token mode, with tokens from a
TokenSystem and once-only invalid-token recovery, against the embedded fake server's business
routes over real loopback HTTP."""

from __future__ import annotations

import asyncio
import gc
import io
import json
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import lark_oapi
import pykka
import pytest
from lark_oapi.api.authen.v1 import (
    CreateOidcAccessTokenRequest,
    CreateOidcAccessTokenRequestBody,
)
from lark_oapi.api.calendar.v4 import ListCalendarRequest
from lark_oapi.api.im.v1 import (
    CreateFileRequest,
    CreateFileRequestBody,
    CreateMessageRequest,
    CreateMessageRequestBody,
    ListChatRequest,
)
from lark_oapi.core.exception import NoAuthorizationException

import actors
from actors.lark import acall, call, lark_client
from actors.testing import FakeFeishu, RecordedRequest, Reply
from tests.conftest import MARKET_ID, SystemFactory, forward_tickets
from tests.test_auth import (
    FAKE_TOKEN,
    REFUSALS,
    USER,
    Canned,
    Host,
    WithHosts,
    WithUsers,
    log_lines,
    refuse,
    tokens_sent,
    user_token,
)

TIMEOUT = 10.0

# Importing lark_oapi leaves ~330,000 long-lived objects (its generated models) to the cyclic
# collector: every full collection then takes a quarter of a second, a pause that shows up as
# an event-loop stall in the timing tests of the same session (test_asyncio). They live as long
# as the process: move them, at collection time, out of the collector's way.
gc.collect()
gc.freeze()


@pytest.fixture
def system(make_system: SystemFactory, app: actors.AppConfig) -> actors.TokenSystem:
    return make_system(app)


def business(server: FakeFeishu) -> list[RecordedRequest]:
    return [r for r in server.requests if r.kind == "business"]


def token(system: actors.TokenSystem, kind: actors.TokenKind = actors.TokenKind.TENANT) -> str:
    return system.proxy.get_token(kind).get(timeout=TIMEOUT)


def list_chats() -> ListChatRequest:
    return ListChatRequest.builder().page_size(20).build()


def send_text(text: str) -> CreateMessageRequest:
    body = (
        CreateMessageRequestBody.builder()
        .receive_id("oc_demo")
        .msg_type("text")
        .content(json.dumps({"text": text}))
        .build()
    )
    return CreateMessageRequest.builder().receive_id_type("chat_id").request_body(body).build()


def test_the_client_uses_the_apps_domain_and_never_fetches_a_token_itself(
    system: actors.TokenSystem, app: actors.AppConfig, server: FakeFeishu
) -> None:
    client = lark_client(system)

    assert client.config.domain == app.base_url and not client.config.app_secret
    assert client.config.timeout == 10.0  # never the SDK's "no timeout"
    with pytest.raises(NoAuthorizationException):
        client.im.v1.chat.list(list_chats())  # no token passed: no fallback to fetching one
    assert server.requests == []


@pytest.mark.parametrize(
    "option",
    ["app_secret", "client_assertion_provider", "domain", "app_id", "cache", "enable_set_token"],
)
def test_options_that_would_let_the_sdk_fetch_or_misdirect_a_token_are_refused(
    system: actors.TokenSystem, option: str
) -> None:
    with pytest.raises(ValueError, match=option):
        lark_client(system, **{option: "x"})


def test_builder_options_are_passed_on(system: actors.TokenSystem) -> None:
    assert lark_client(system, timeout=2.5).config.timeout == 2.5


def test_call_passes_the_systems_token(system: actors.TokenSystem, server: FakeFeishu) -> None:
    client = lark_client(system)

    response = call(system, client.im.v1.chat.list, list_chats())

    assert response.success(), response.msg
    assert response.data.items[0].chat_id
    [sent] = business(server)
    assert sent.token == token(system) and sent.query == "page_size=20"


@pytest.mark.parametrize("status", [200, 400])
def test_call_recovers_once_from_a_revoked_token(
    system: actors.TokenSystem, server: FakeFeishu, status: int
) -> None:
    client = lark_client(system)
    stale = token(system)
    server.rotate()
    server.business.set_invalid_status(status)

    response = call(system, client.im.v1.chat.list, list_chats())

    assert response.success(), response.msg
    first, retry = business(server)
    assert first.token == stale and retry.token == token(system) != stale
    assert system.metrics().invalidations == 1


def test_call_resends_a_post_with_the_same_body(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    token(system)
    server.rotate()

    response = call(system, client.im.v1.message.create, send_text("hello"))

    assert response.success(), response.msg
    assert json.loads(response.data.body.content) == {"text": "hello"}
    first, retry = business(server)
    assert first.body == retry.body and json.loads(retry.body)["receive_id"] == "oc_demo"
    assert first.token != retry.token


def test_call_returns_the_second_answer_when_the_token_is_invalid_twice(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    server.script(
        "business",
        Reply.code(99991663, "first", status=400),
        Reply.code(99991663, "second", status=400),
    )

    response = call(system, client.im.v1.chat.list, list_chats())

    assert (response.code, response.msg) == (99991663, "second")
    assert len(business(server)) == 2


def test_call_leaves_a_scope_error_alone(system: actors.TokenSystem, server: FakeFeishu) -> None:
    client = lark_client(system)
    server.script("business", Reply.code(99991672, "Access denied: scope", status=400))

    response = call(system, client.im.v1.chat.list, list_chats())

    assert response.code == 99991672
    assert len(business(server)) == 1 and system.metrics().invalidations == 0


def test_call_with_an_app_token_recovers_from_99991664(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    stale = token(system, actors.TokenKind.APP)
    server.rotate()
    body = (
        CreateOidcAccessTokenRequestBody.builder()
        .grant_type("authorization_code")
        .code("code-1")
        .build()
    )
    request = CreateOidcAccessTokenRequest.builder().request_body(body).build()

    response = call(
        system, client.authen.v1.oidc_access_token.create, request, kind=actors.TokenKind.APP
    )

    assert response.success(), response.msg
    assert response.data.access_token.startswith("u-")
    first, retry = business(server)
    assert first.token == stale and retry.token == token(system, actors.TokenKind.APP)


def test_acall_recovers_once_from_a_revoked_token(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    stale = token(system)
    server.rotate()

    response = asyncio.run(acall(system, client.im.v1.chat.alist, list_chats()))

    assert response.success(), response.msg
    first, retry = business(server)
    assert first.token == stale and retry.token == token(system) != stale


def test_acall_returns_the_second_answer_when_the_token_is_invalid_twice(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    server.script(
        "business",
        Reply.code(99991663, "first", status=200),
        Reply.code(99991663, "second", status=200),
    )

    response = asyncio.run(acall(system, client.im.v1.chat.alist, list_chats()))

    assert (response.code, response.msg) == (99991663, "second")
    assert len(business(server)) == 2


def test_a_marketplace_app_calls_for_one_tenant(
    make_system: SystemFactory, market_app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(market_app)
    forward_tickets(server, system)
    client = lark_client(system)

    response = call(system, client.im.v1.chat.list, list_chats(), tenant_key="tk-9")
    aresponse = asyncio.run(
        acall(system, client.im.v1.chat.alist, list_chats(), tenant_key="tk-10")
    )

    assert response.data.items[0].tenant_key == "tk-9"
    assert aresponse.data.items[0].tenant_key == "tk-10"
    assert [(r.app_id, r.tenant_key) for r in business(server)] == [
        (MARKET_ID, "tk-9"),
        (MARKET_ID, "tk-10"),
    ]
    assert server.count("app") == 1  # the app token is fetched once and shared by the tenants


def test_a_non_json_answer_is_the_sdks_to_report_and_is_not_retried(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    server.script("business", Reply.http(502))

    with pytest.raises(json.JSONDecodeError):  # the SDK parses every answer as JSON
        call(system, client.im.v1.chat.list, list_chats())

    assert len(business(server)) == 1 and system.metrics().invalidations == 0


def test_call_refuses_a_coroutine_method_before_anything_is_sent(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)

    with pytest.raises(TypeError, match=r"coroutine function; await lark\.acall"):
        call(system, client.im.v1.chat.alist, list_chats())

    assert server.requests == []  # not even a token fetch


def test_acall_refuses_a_blocking_method_before_anything_is_sent(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)

    with pytest.raises(TypeError, match=r"not a coroutine function; use lark\.call"):
        asyncio.run(acall(system, client.im.v1.chat.list, list_chats()))

    assert server.requests == []


def test_call_and_acall_take_the_kind_positionally_as_get_token_does(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    client = lark_client(system)
    body = CreateOidcAccessTokenRequestBody.builder().grant_type("authorization_code")
    request = CreateOidcAccessTokenRequest.builder().request_body(body.code("c-1").build()).build()
    app = actors.TokenKind.APP

    response = call(system, client.authen.v1.oidc_access_token.create, request, app)
    aresponse = asyncio.run(acall(system, client.authen.v1.oidc_access_token.acreate, request, app))

    assert response.success() and aresponse.success(), (response.msg, aresponse.msg)
    assert [r.token for r in business(server)] == [token(system, app)] * 2


@pytest.mark.parametrize("flavour", ["call", "acall"])
def test_a_token_not_given_within_the_timeout_fails_the_call_before_it_is_sent(
    system: actors.TokenSystem, server: FakeFeishu, flavour: str
) -> None:
    client = lark_client(system)
    gate = server.hold("tenant")  # the token fetch hangs

    def send() -> object:
        if flavour == "call":
            return call(system, client.im.v1.chat.list, list_chats(), timeout=0.05)
        return asyncio.run(acall(system, client.im.v1.chat.alist, list_chats(), timeout=0.05))

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send)
        # A bound, not a measurement: a call without a timeout would wait for the gate.
        finished, _ = wait([sending], timeout=TIMEOUT)
        gate.release()

    assert finished, "the call kept waiting for the token past its timeout"
    with pytest.raises(pykka.Timeout if flavour == "call" else TimeoutError):
        sending.result()
    assert business(server) == []


# --- the token goes to the app's domain only; an upload is not sent twice -------------------------

FILES = "/open-apis/im/v1/files"
UPLOAD = b"an upload read once by the SDK's form encoder"


def upload() -> CreateFileRequest:
    body = (
        CreateFileRequestBody.builder()
        .file_type("stream")
        .file_name("note.txt")
        .file(io.BytesIO(UPLOAD))
        .build()
    )
    return CreateFileRequest.builder().request_body(body).build()


class TestHostsAndBodies(WithHosts):
    @pytest.fixture
    def system(self, make_system: SystemFactory, front_app: actors.AppConfig) -> actors.TokenSystem:
        return make_system(front_app)

    def test_a_request_naming_another_host_is_handed_no_token_and_the_sdk_refuses_it(
        self, system: actors.TokenSystem, server: FakeFeishu, foreign: Host
    ) -> None:
        client = lark_client(system)
        request = (
            lark_oapi.BaseRequest.builder()
            .http_method(lark_oapi.HttpMethod.GET)
            .uri(foreign.url + "/open-apis/im/v1/chats")
            .token_types({lark_oapi.AccessTokenType.TENANT})
            .build()
        )

        with pytest.raises(NoAuthorizationException):
            call(system, client.request, request)

        assert foreign.seen() == [] and server.count("tenant") == 0

    def test_an_upload_answered_token_invalid_is_not_sent_again_and_its_answer_is_returned(
        self, system: actors.TokenSystem, front: Host
    ) -> None:
        client = lark_client(system)
        front.answer(FILES, Canned.code(99991663, status=400), Canned.code(0))

        response = call(system, client.im.v1.file.create, upload())

        assert response.code == 99991663
        [sent] = front.seen(FILES)
        assert UPLOAD in sent.body
        # The token is still known bad: the caller's own retry gets a fresh one.
        assert system.metrics().invalidations == 1

    def test_an_async_upload_answered_token_invalid_is_not_sent_again(
        self, system: actors.TokenSystem, front: Host
    ) -> None:
        client = lark_client(system)
        front.answer(FILES, Canned.code(99991663, status=400), Canned.code(0))

        response = asyncio.run(acall(system, client.im.v1.file.acreate, upload()))

        assert response.code == 99991663
        [sent] = front.seen(FILES)
        assert UPLOAD in sent.body


# --- a user's token -------------------------------------------------------------------------------


def list_calendars(
    system: actors.TokenSystem, flavour: str, user: str | None = "ou_alice", **names: Any
) -> Any:
    """The user's calendars through the SDK, with ``call`` or ``acall`` (``flavour``); ``names``
    are further keyword arguments of the call (``kind=``, ``tenant_key=``, ...)."""
    client, request = lark_client(system), ListCalendarRequest.builder().build()
    names = {"kind": USER, "user": user} | names
    if flavour == "call":
        return call(system, client.calendar.v4.calendar.list, request, **names)
    return asyncio.run(acall(system, client.calendar.v4.calendar.alist, request, **names))


FLAVOURS = pytest.mark.parametrize("flavour", ["call", "acall"])


class TestUserTokens(WithUsers):
    @FLAVOURS
    def test_a_users_token_goes_in_the_request_option_for_that_user(
        self, user_system: actors.TokenSystem, user_server: FakeFeishu, flavour: str
    ) -> None:
        alice = list_calendars(user_system, flavour, "ou_alice")
        bob = list_calendars(user_system, flavour, "ou_bob")

        assert alice.success() and bob.success(), (alice.msg, bob.msg)
        summaries = [r.data.calendar_list[0].summary for r in (alice, bob)]
        assert summaries == ["Alice", "Bob"]
        assert tokens_sent(user_server) == [
            user_token(user_system, u) for u in ("ou_alice", "ou_bob")
        ]

    @pytest.mark.parametrize("refusal", REFUSALS, ids=[how for how, _ in REFUSALS])
    @FLAVOURS
    def test_a_user_token_the_server_refuses_is_rotated_once_and_the_call_made_again(
        self,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        feishu_clock: actors.ManualClock,
        flavour: str,
        refusal: tuple[str, int],
    ) -> None:
        how, code = refusal
        stale = user_token(user_system)
        assert refuse(user_server, feishu_clock, stale, how) == code

        response = list_calendars(user_system, flavour)

        assert response.success(), response.msg
        fresh = user_token(user_system)
        assert fresh != stale and tokens_sent(user_server) == [stale, fresh]
        assert user_server.oauth.rotations("ou_alice") == user_server.oauth.rotations() == 1
        assert user_server.oauth.refresh_reuses == 0

    @FLAVOURS
    def test_a_users_new_token_refused_too_is_returned_without_a_second_rotation(
        self, user_system: actors.TokenSystem, user_server: FakeFeishu, flavour: str
    ) -> None:
        stale = user_token(user_system)
        user_server.script(
            "business",
            Reply.code(99991677, "first", status=400),
            Reply.code(99991668, "second", status=400),
        )

        response = list_calendars(user_system, flavour)

        assert (response.code, response.msg) == (99991668, "second")
        fresh = user_token(user_system)
        assert tokens_sent(user_server) == [stale, fresh] and fresh != stale
        assert user_server.oauth.rotations("ou_alice") == 1

    @pytest.mark.parametrize(
        ("user", "names"),
        [
            (None, {}),
            ("ou_alice", {"tenant_key": "tk-1"}),
            ("ou_alice", {"kind": actors.TokenKind.TENANT}),
            ("ou_alice", {"kind": actors.TokenKind.APP}),
        ],
        ids=["user-missing", "user-with-tenant", "tenant-with-user", "app-with-user"],
    )
    @FLAVOURS
    def test_user_is_required_for_a_user_token_and_refused_for_the_other_kinds(
        self,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        flavour: str,
        user: str | None,
        names: dict[str, Any],
    ) -> None:
        with pytest.raises(ValueError, match="user"):
            list_calendars(user_system, flavour, user, **names)

        assert user_server.requests == []

    @FLAVOURS
    def test_a_user_who_withdrew_the_authorization_must_authorize_again_and_no_token_is_logged(
        self,
        user_system: actors.TokenSystem,
        user_server: FakeFeishu,
        feishu_clock: actors.ManualClock,
        flavour: str,
    ) -> None:
        refuse(user_server, feishu_clock, user_token(user_system), "expired")
        with log_lines() as lines:
            list_calendars(user_system, flavour)  # refused, rotated, called again
            user_server.oauth.revoke("ou_alice")
            with pytest.raises(actors.ReauthorizationRequired) as raised:
                list_calendars(user_system, flavour)  # refused, the rotation refused

        assert (raised.value.reason, raised.value.user) == ("revoked", "ou_alice")
        assert len(tokens_sent(user_server)) == 3 and lines
        said = [*lines, str(raised.value), repr(raised.value)]
        assert [line for line in said if FAKE_TOKEN.search(line)] == []
