"""``actors.httpx.FeishuAuth`` (``actors.AsyncFeishuAuth``): the invalid-token contract with
``httpx.Client`` and ``httpx.AsyncClient``, and streamed downloads, against the embedded fake
server over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import actors
import actors.httpx
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory
from tests.test_auth import (
    CHATS,
    Answer,
    BlockingCaller,
    Call,
    Caller,
    InvalidTokenContract,
    MakeCaller,
    business,
)


class HttpxSyncCaller(BlockingCaller):
    def __init__(self, base_url: str, auth: httpx.Auth) -> None:
        self._client = httpx.Client(base_url=base_url, auth=auth, trust_env=False, timeout=5)

    def send(self, call: Call) -> Answer:
        response = self._client.request(call.method, call.path, json=call.json, params=call.params)
        return Answer(response.status_code, response.text)

    def close(self) -> None:
        self._client.close()


class HttpxAsyncCaller:
    """Each send runs its own event loop: the TokenSystem serves any number of loops."""

    timeout_error: type[Exception] = TimeoutError

    def __init__(self, base_url: str, auth: httpx.Auth) -> None:
        self._base = base_url
        self._auth = auth

    async def _send_all(self, calls: list[Call]) -> list[Answer]:
        async with httpx.AsyncClient(
            base_url=self._base, auth=self._auth, trust_env=False, timeout=5
        ) as client:
            responses = await asyncio.gather(
                *(client.request(c.method, c.path, json=c.json, params=c.params) for c in calls)
            )
        return [Answer(r.status_code, r.text) for r in responses]

    def send(self, call: Call) -> Answer:
        return asyncio.run(self._send_all([call]))[0]

    def send_together(self, calls: list[Call]) -> list[Answer]:
        return asyncio.run(self._send_all(calls))

    def close(self) -> None:
        return


class TestFeishuAuth(InvalidTokenContract):
    @pytest.fixture(params=["sync", "async"])
    def make_caller(
        self, request: pytest.FixtureRequest, server: FakeFeishu
    ) -> Iterator[MakeCaller]:
        made: list[HttpxSyncCaller | HttpxAsyncCaller] = []
        kind = HttpxSyncCaller if request.param == "sync" else HttpxAsyncCaller

        def make(system: actors.TokenSystem, **auth: Any) -> Caller:
            made.append(kind(server.base_url, actors.httpx.FeishuAuth(system, **auth)))
            return made[-1]

        yield make
        for caller in made:
            caller.close()


def test_async_feishu_auth_is_the_httpx_auth() -> None:
    assert actors.AsyncFeishuAuth is actors.httpx.FeishuAuth
    assert issubclass(actors.httpx.FeishuAuth, httpx.Auth)


@pytest.mark.parametrize("flow", ["sync", "async"])
def test_a_streamed_non_json_answer_is_left_unread(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu, flow: str
) -> None:
    # A download is streamed to the caller: only a JSON answer can say "token invalid".
    server.script("business", Reply.http(200, "x" * 100_000, content_type="application/zip"))
    auth = actors.httpx.FeishuAuth(make_system(app))
    url = server.base_url + CHATS

    async def stream_async() -> tuple[bool, int]:
        async with (
            httpx.AsyncClient(auth=auth, trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            unread = not response.is_stream_consumed
            return unread, len(await response.aread())

    if flow == "async":
        unread, size = asyncio.run(stream_async())
    else:
        with httpx.Client(auth=auth, trust_env=False) as client, client.stream("GET", url) as r:
            unread, size = not r.is_stream_consumed, len(r.read())

    assert unread and size == 100_000
    assert len(business(server)) == 1
