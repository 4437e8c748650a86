"""``actors.requests.FeishuAuth`` (``actors.FeishuAuth``): the invalid-token contract with a
``requests.Session``, and what only ``requests`` does (redirects followed by the session, streamed
downloads), against the embedded fake server over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory
from tests.test_auth import (
    CHATS,
    LIST_CHATS,
    Answer,
    BlockingCaller,
    Call,
    Caller,
    InvalidTokenContract,
    MakeCaller,
    business,
    tokens_sent,
    warm,
)


class RequestsCaller(BlockingCaller):
    def __init__(self, base_url: str, auth: requests.auth.AuthBase) -> None:
        self._base = base_url
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.auth = auth

    def send(self, call: Call) -> Answer:
        response = self._session.request(
            call.method, self._base + call.path, json=call.json, params=call.params, timeout=5
        )
        return Answer(response.status_code, response.text)

    def close(self) -> None:
        self._session.close()


class TestFeishuAuth(InvalidTokenContract):
    @pytest.fixture
    def make_caller(self, server: FakeFeishu) -> Iterator[MakeCaller]:
        made: list[RequestsCaller] = []

        def make(system: actors.TokenSystem, **auth: Any) -> Caller:
            made.append(RequestsCaller(server.base_url, actors.FeishuAuth(system, **auth)))
            return made[-1]

        yield make
        for caller in made:
            caller.close()


@pytest.fixture
def system(make_system: SystemFactory, app: actors.AppConfig) -> actors.TokenSystem:
    return make_system(app)


def session() -> requests.Session:
    made = requests.Session()
    made.trust_env = False
    return made


def test_an_invalid_token_at_the_end_of_a_redirect_is_recovered_from_once(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    # The session follows the redirect itself; the answer judged is the last of the chain.
    stale = warm(system)
    server.rotate()
    server.script("business", Reply.http(302, "", headers={"Location": CHATS}))

    with session() as client:
        response = client.get(server.base_url + CHATS, auth=actors.FeishuAuth(system), timeout=5)

    assert response.status_code == 200 and response.json()["code"] == 0
    assert tokens_sent(server) == [stale, stale, warm(system)]
    assert system.metrics().invalidations == 1


def test_a_streamed_non_json_answer_is_left_unread(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    # A download is streamed to the caller: only a JSON answer can say "token invalid".
    server.script("business", Reply.http(200, "x" * 100_000, content_type="application/zip"))

    with (
        session() as client,
        client.get(
            server.base_url + CHATS, auth=actors.FeishuAuth(system), stream=True, timeout=5
        ) as response,
    ):
        unread = response.raw.tell() == 0
        size = len(response.content)

    assert unread and size == 100_000
    assert len(business(server)) == 1


def test_a_streamed_json_answer_is_read_to_see_its_code(
    system: actors.TokenSystem, server: FakeFeishu
) -> None:
    server.script("business", Reply.code(99991663, "token invalid", status=400))

    with (
        session() as client,
        client.get(
            server.base_url + LIST_CHATS.path,
            auth=actors.FeishuAuth(system),
            stream=True,
            timeout=5,
        ) as response,
    ):
        assert response.json()["code"] == 0

    assert len(business(server)) == 2 and system.metrics().invalidations == 1
