"""The invalid-token policy the integrations share (``actors._auth``): its steps, driven by
hand, its two drivers, and :class:`InvalidTokenContract`, the contract every HTTP client auth
keeps against the embedded fake server's business routes over real loopback HTTP.

The contract's test bodies are written once against :class:`Caller`; a client's test module
(``test_requests``, ``test_httpx``) subclasses it and gives the ``make_caller`` fixture.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pykka
import pytest

import actors
from actors._auth import (
    Fetch,
    Invalidate,
    ReadCode,
    Send,
    Step,
    TokenTarget,
    arun,
    bearer,
    bearer_of,
    exchange,
    is_json,
    is_token_invalid,
    response_code,
    run,
)
from actors.testing import FakeFeishu, RecordedRequest, Reply
from tests.conftest import MARKET_ID, SystemFactory, forward_tickets

CHATS = "/open-apis/im/v1/chats"
MESSAGES = "/open-apis/im/v1/messages"
USER_TOKEN = "/open-apis/authen/v1/oidc/access_token"  # takes an app token
TIMEOUT = 10.0


# --- the policy, step by step -------------------------------------------------------------------


def walk(codes: list[object]) -> list[Step]:
    """The steps of one exchange whose answers carry ``codes``, in order (an answer stands for
    its code; the tokens handed out are t-1, t-2, ...)."""
    flow = exchange()
    taken: list[Step] = []
    reply: object = None
    answers = iter(codes)
    tokens = (f"t-{n}" for n in range(1, 10))
    while True:
        try:
            step = flow.send(reply)
        except StopIteration:
            return taken
        taken.append(step)
        if isinstance(step, Fetch):
            reply = next(tokens)
        elif isinstance(step, Send):
            reply = next(answers)
        elif isinstance(step, ReadCode):
            reply = step.answer
        else:
            reply = None


def test_an_answer_without_an_invalid_token_code_ends_the_exchange_after_one_send() -> None:
    assert walk([0]) == [Fetch(), Send("t-1"), ReadCode(0)]


@pytest.mark.parametrize("code", sorted(actors.TOKEN_INVALID_CODES))
def test_an_invalid_token_code_invalidates_the_token_sent_and_sends_once_with_the_next(
    code: int,
) -> None:
    # The resend's answer is final: it is never read.
    assert walk([code, 0]) == [
        Fetch(),
        Send("t-1"),
        ReadCode(code),
        Invalidate("t-1"),
        Fetch(),
        Send("t-2"),
    ]


def test_the_resend_is_the_last_send_whatever_its_answer() -> None:
    assert walk([99991663, 99991663])[-1] == Send("t-2")
    assert [s for s in walk([99991663, 99991663]) if isinstance(s, Send)] == [
        Send("t-1"),
        Send("t-2"),
    ]


@pytest.mark.parametrize("code", [99991672, None, "99991663", 99991663.0, True, 0])
def test_only_an_integer_invalid_token_code_asks_for_a_resend(code: object) -> None:
    assert not is_token_invalid(code)
    assert walk([code]) == [Fetch(), Send("t-1"), ReadCode(code)]


def test_the_code_is_read_from_a_json_object_only() -> None:
    assert response_code({"code": 99991663, "msg": "x"}) == 99991663
    assert response_code([{"code": 99991663}]) is None
    assert response_code("99991663") is None


def test_a_bearer_header_round_trips_its_token() -> None:
    assert bearer("t-abc") == "Bearer t-abc"
    assert bearer_of(bearer("t-abc")) == "t-abc"
    assert [bearer_of(h) for h in (None, "", "Bearer ", "Basic dXNlcg==")] == [None] * 4


def test_only_a_json_content_type_can_carry_a_code() -> None:
    assert is_json("application/JSON; charset=utf-8") and is_json("application/problem+json")
    assert not is_json("text/html") and not is_json(None)


# --- the two drivers -----------------------------------------------------------------------------


class StubProxy:
    """The part of a TokenProxy a target uses: hands out t-1, t-2, ... and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self._tokens: Iterator[str] = (f"t-{n}" for n in range(1, 10))

    def get_token(
        self, kind: actors.TokenKind, *, tenant_key: str | None, app_id: str | None
    ) -> pykka.Future[str]:
        self.calls.append(("get", kind, tenant_key, app_id))
        return resolved(next(self._tokens))

    async def aget_token(
        self, kind: actors.TokenKind, *, tenant_key: str | None, app_id: str | None
    ) -> str:
        return self.get_token(kind, tenant_key=tenant_key, app_id=app_id).get()

    def invalidate(self, token: str) -> pykka.Future[bool]:
        self.calls.append(("invalidate", token))
        return resolved(True)

    async def ainvalidate(self, token: str) -> bool:
        return self.invalidate(token).get()


def resolved(value: Any) -> pykka.Future[Any]:
    future: pykka.Future[Any] = pykka.ThreadingFuture()
    future.set(value)
    return future


@pytest.mark.parametrize("driver", ["blocking", "awaited"])
def test_both_drivers_get_and_invalidate_the_targets_token_the_same_way(driver: str) -> None:
    proxy = StubProxy()
    target = TokenTarget(
        cast("Any", proxy), actors.TokenKind.APP, tenant_key="tk-1", app_id="cli_x", timeout=1
    )
    codes, sent = iter([99991664, 0]), []

    def send(token: str) -> object:
        sent.append(token)
        return next(codes)

    async def asend(token: str) -> object:
        return send(token)

    async def aread(answer: object) -> object:
        return answer

    if driver == "blocking":
        final = run(target.flow(send=send, read_code=lambda answer: answer))
    else:
        aflow = target.aflow(send=asend, read_code=aread)
        final = asyncio.run(arun(aflow))

    assert final == 0 and sent == ["t-1", "t-2"]
    get = ("get", actors.TokenKind.APP, "tk-1", "cli_x")
    assert proxy.calls == [get, ("invalidate", "t-1"), get]


# --- one interface over the client kinds ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)


class Caller(Protocol):
    # What a token wait past the auth's ``timeout`` raises: pykka.Timeout blocking, TimeoutError
    # awaited.
    timeout_error: type[Exception]

    def send(self, call: Call) -> Answer: ...

    def send_together(self, calls: list[Call]) -> list[Answer]:
        """Send ``calls`` concurrently; the answers in the same order."""
        ...


class BlockingCaller:
    """A client whose sends block: sent together from threads, one each."""

    timeout_error: type[Exception] = pykka.Timeout

    def send(self, call: Call) -> Answer:
        raise NotImplementedError

    def send_together(self, calls: list[Call]) -> list[Answer]:
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(self.send, calls))


MakeCaller = Callable[..., Caller]
"""``make_caller(system, kind=..., tenant_key=..., timeout=...)``: a client whose auth takes its
tokens from ``system``, closed after the test."""


def business(server: FakeFeishu) -> list[RecordedRequest]:
    return [r for r in server.requests if r.kind == "business"]


def tokens_sent(server: FakeFeishu) -> list[str | None]:
    return [r.token for r in business(server)]


def warm(system: actors.TokenSystem, kind: actors.TokenKind = actors.TokenKind.TENANT) -> str:
    return system.proxy.get_token(kind).get(timeout=TIMEOUT)


LIST_CHATS = Call("GET", CHATS)
SEND_TEXT = Call(
    "POST",
    MESSAGES,
    json={"receive_id": "oc_1", "msg_type": "text", "content": '{"text":"hello"}'},
    params={"receive_id_type": "chat_id"},
)


# --- the contract --------------------------------------------------------------------------------


class InvalidTokenContract:
    @pytest.fixture
    def system(self, make_system: SystemFactory, app: actors.AppConfig) -> actors.TokenSystem:
        return make_system(app)

    def test_the_bearer_header_carries_the_systems_token(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 200 and answer.body["code"] == 0
        [call] = business(server)
        token = warm(system)
        assert call.token == token and call.header("authorization") == f"Bearer {token}"

    @pytest.mark.parametrize("status", [200, 400])
    @pytest.mark.parametrize("code", sorted(actors.TOKEN_INVALID_CODES))
    def test_an_invalid_token_code_invalidates_the_token_sent_and_resends_once_with_a_fresh_one(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        code: int,
        status: int,
    ) -> None:
        stale = warm(system)
        server.rotate()  # revoked upstream: the refetch after the invalidation gets a new token
        server.script("business", Reply.code(code, "token invalid", status=status))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 200 and answer.body["code"] == 0
        fresh = warm(system)
        assert fresh != stale and server.valid_token(fresh)
        assert tokens_sent(server) == [stale, fresh]  # the resend carried the fresh token
        assert system.metrics().invalidations == 1

    @pytest.mark.parametrize("status", [200, 400])
    @pytest.mark.parametrize(
        "case",
        [
            (actors.TokenKind.TENANT, LIST_CHATS),
            (
                actors.TokenKind.APP,
                Call("POST", USER_TOKEN, json={"grant_type": "authorization_code", "code": "c-1"}),
            ),
        ],
        ids=["tenant-route-99991663", "app-route-99991664"],
    )
    def test_a_token_the_server_revoked_is_recovered_from_as_feishu_answers_it(
        self,
        make_caller: MakeCaller,
        system: actors.TokenSystem,
        server: FakeFeishu,
        case: tuple[actors.TokenKind, Call],
        status: int,
    ) -> None:
        kind, call = case
        server.business.set_invalid_status(status)
        stale = warm(system, kind)
        server.rotate()

        answer = make_caller(system, kind=kind).send(call)

        assert answer.status == 200 and answer.body["code"] == 0
        first, retry = business(server)
        assert first.token == stale and retry.token == warm(system, kind) != stale
        assert (first.kind, retry.kind) == ("business", "business")
        assert server.count(kind.value) == 2  # the first fetch and the one after the invalidation

    def test_an_invalid_token_twice_in_a_row_returns_the_second_answer_without_a_loop(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        server.script(
            "business",
            Reply.code(99991663, "first", status=400),
            Reply.code(99991663, "second", status=400),
        )

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 400
        assert answer.body == {"code": 99991663, "msg": "second"}
        assert len(business(server)) == 2

    @pytest.mark.parametrize("code", [99991672, 99991679, 99991661, 99991400, 1254002])
    def test_other_codes_come_back_untouched_after_one_request(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu, code: int
    ) -> None:
        server.script("business", Reply.code(code, "not a token problem", status=400))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 400 and answer.body["code"] == code
        assert len(business(server)) == 1
        assert server.count("tenant") == 1 and system.metrics().invalidations == 0

    def test_a_non_json_answer_is_returned_untouched_and_not_retried(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        server.script("business", Reply.http(502))

        answer = make_caller(system).send(LIST_CHATS)

        assert answer.status == 502 and "502 Bad Gateway" in answer.text
        assert len(business(server)) == 1 and system.metrics().invalidations == 0

    def test_a_post_is_resent_with_the_same_json_body(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        stale = warm(system)
        server.rotate()

        answer = make_caller(system).send(SEND_TEXT)

        assert answer.status == 200 and answer.body["code"] == 0
        assert answer.body["data"]["body"]["content"] == '{"text":"hello"}'
        first, retry = business(server)
        assert first.token == stale != retry.token
        assert json.loads(first.body) == json.loads(retry.body) == SEND_TEXT.json
        assert first.query == retry.query == "receive_id_type=chat_id"

    def test_two_requests_failing_with_the_same_stale_token_cause_one_invalidation(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        stale = warm(system)
        caller = make_caller(system)
        gate = server.hold("business")
        with ThreadPoolExecutor(1) as pool:
            both = pool.submit(caller.send_together, [LIST_CHATS, LIST_CHATS])
            assert gate.wait_for_waiting(
                2, timeout=TIMEOUT
            )  # both sent the token, neither answered
            server.rotate()  # ... and now it is revoked: both get 99991663
            gate.release()
            answers = both.result(timeout=TIMEOUT)

        assert [a.body["code"] for a in answers] == [0, 0]
        fresh = warm(system)
        assert tokens_sent(server) == [stale, stale, fresh, fresh]
        # Compare-and-invalidate: the second invalidation of the stale token was a no-op.
        assert system.metrics().invalidations == 1
        assert server.count("tenant") == 2

    def test_a_marketplace_tenants_token_is_sent_for_that_tenant(
        self,
        make_caller: MakeCaller,
        make_system: SystemFactory,
        market_app: actors.AppConfig,
        server: FakeFeishu,
    ) -> None:
        system = make_system(market_app)
        forward_tickets(server, system)

        answer = make_caller(system, tenant_key="tk-7").send(LIST_CHATS)

        assert answer.body["data"]["items"][0]["tenant_key"] == "tk-7"
        [call] = business(server)
        assert (call.app_id, call.tenant_key) == (MARKET_ID, "tk-7")

    def test_a_token_not_given_within_the_timeout_fails_the_request_before_it_is_sent(
        self, make_caller: MakeCaller, system: actors.TokenSystem, server: FakeFeishu
    ) -> None:
        gate = server.hold("tenant")  # the token fetch hangs
        caller = make_caller(system, timeout=0.05)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(caller.send, LIST_CHATS)
            # A bound, not a measurement: an auth without a timeout would wait for the gate.
            finished, _ = wait([sending], timeout=TIMEOUT)
            gate.release()

        assert finished, "the auth kept waiting for the token past its timeout"
        with pytest.raises(caller.timeout_error):
            sending.result()
        assert business(server) == []
