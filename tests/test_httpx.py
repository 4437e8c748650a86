"""``actors.httpx.FeishuAuth`` (``actors.AsyncFeishuAuth``): the invalid-token contract with
``httpx.Client`` and ``httpx.AsyncClient``, and streamed downloads, against the embedded fake
server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

import actors
import actors.httpx
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory
from tests.test_auth import (
    CHATS,
    LONG_JSON,
    MEMORY_BOUND,
    MESSAGES,
    SEND_TEXT,
    Answer,
    BlockingCaller,
    Call,
    Caller,
    Canned,
    Host,
    InvalidTokenContract,
    MakeCaller,
    OneWay,
    WithHosts,
    achunks_received,
    business,
    chunked,
    chunks_received,
    gzipped,
    ndjson,
    ndjson_received,
    offset,
    peak_memory,
    sent_once_opened,
    warm,
)


def options(call: Call) -> dict[str, Any]:
    return {"json": call.json, "params": call.params, "headers": call.headers}


class HttpxSyncCaller(BlockingCaller):
    def __init__(self, base_url: str, auth: httpx.Auth) -> None:
        self._client = httpx.Client(
            base_url=base_url, auth=auth, trust_env=False, timeout=5, follow_redirects=True
        )

    def send(self, call: Call) -> Answer:
        response = self._client.request(call.method, call.url or call.path, **options(call))
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
            base_url=self._base, auth=self._auth, trust_env=False, timeout=5, follow_redirects=True
        ) as client:
            responses = await asyncio.gather(
                *(client.request(c.method, c.url or c.path, **options(c)) for c in calls)
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


# --- a resend sends the same bytes, or is not made; a stream is read only as far as its code -----

MESSAGE = json.dumps(SEND_TEXT.json).encode()
EXPORT = "/open-apis/drive/v1/export"


def pieces() -> Iterator[bytes]:
    return (MESSAGE[i : i + 7] for i in range(0, len(MESSAGE), 7))


async def apieces() -> AsyncIterator[bytes]:
    for piece in pieces():
        yield piece


def multipart(files: dict[str, Any]) -> httpx.Request:
    return httpx.Request("POST", "http://x/", files=files)


def send(auth: httpx.Auth, flow: str, method: str, url: str, **options: Any) -> httpx.Response:
    """One request with ``auth``, by an ``httpx.Client`` or an ``httpx.AsyncClient`` (``flow``)."""

    async def asend() -> httpx.Response:
        async with httpx.AsyncClient(auth=auth, trust_env=False, timeout=5) as client:
            return await client.request(method, url, **options)

    if flow == "async":
        return asyncio.run(asend())
    with httpx.Client(auth=auth, trust_env=False, timeout=5) as client:
        return client.request(method, url, **options)


class TestBodiesAndStreams(WithHosts):
    @pytest.fixture
    def system(self, make_system: SystemFactory, front_app: actors.AppConfig) -> actors.TokenSystem:
        return make_system(front_app)

    def post_message(
        self, system: actors.TokenSystem, front: Host, flow: str, **body: Any
    ) -> httpx.Response:
        auth = actors.httpx.FeishuAuth(system)
        return send(auth, flow, "POST", front.url + MESSAGES, params=SEND_TEXT.params, **body)

    @pytest.mark.parametrize(
        ("flow", "make_body"),
        [
            ("sync", lambda: {"content": pieces()}),
            ("sync", lambda: {"content": iter(list(pieces()))}),
            ("sync", lambda: {"content": OneWay(MESSAGE)}),
            ("sync", lambda: {"files": {"file": ("m.json", OneWay(MESSAGE))}}),
            ("async", lambda: {"content": apieces()}),
        ],
        ids=["generator", "iterator", "one-way-file", "multipart-one-way-file", "async-generator"],
    )
    def test_a_body_that_cannot_be_sent_again_is_not_resent_and_its_answer_is_returned(
        self,
        system: actors.TokenSystem,
        server: FakeFeishu,
        front: Host,
        flow: str,
        make_body: Callable[[], dict[str, Any]],
    ) -> None:
        stale = warm(system)
        server.rotate()

        response = self.post_message(system, front, flow, **make_body())

        assert response.status_code == 400 and response.json()["code"] == 99991663
        [seen] = front.seen(MESSAGES)
        assert MESSAGE in seen.body
        # The token is still known bad: the caller's own retry gets a fresh one.
        assert system.metrics().invalidations == 1 and warm(system) != stale

    @pytest.mark.parametrize(
        ("flow", "make_body"),
        [
            ("sync", lambda: {"content": io.BytesIO(MESSAGE)}),
            ("sync", lambda: {"files": {"file": ("m.json", offset(MESSAGE))}}),
            ("async", lambda: {"content": MESSAGE}),
            ("async", lambda: {"files": {"file": ("m.json", io.BytesIO(MESSAGE))}}),
        ],
        ids=["file", "multipart-file", "async-bytes", "async-multipart-file"],
    )
    def test_a_body_that_can_be_sent_again_is_resent_byte_for_byte(
        self,
        system: actors.TokenSystem,
        server: FakeFeishu,
        front: Host,
        flow: str,
        make_body: Callable[[], dict[str, Any]],
    ) -> None:
        warm(system)
        server.rotate()

        response = self.post_message(system, front, flow, **make_body())

        first, again = front.seen(MESSAGES)
        assert MESSAGE in first.body and again.body == first.body
        assert response.json()["code"] != 99991663  # the resend's answer, with a fresh token

    @pytest.mark.parametrize("flow", ["sync", "async"])
    def test_a_streamed_json_download_is_never_read_whole_and_reaches_the_caller_intact(
        self, system: actors.TokenSystem, front: Host, flow: str
    ) -> None:
        warm(system)
        front.answer(EXPORT, Canned(200, ndjson, "application/x-ndjson"))
        auth = actors.httpx.FeishuAuth(system)
        url = front.url + EXPORT

        async def download() -> tuple[int, str]:
            async with (
                httpx.AsyncClient(auth=auth, trust_env=False, timeout=30) as client,
                client.stream("GET", url) as response,
            ):
                return await achunks_received(response.aiter_bytes(2**20))

        with peak_memory() as peak:
            if flow == "async":
                received = asyncio.run(download())
            else:
                with (
                    httpx.Client(auth=auth, trust_env=False, timeout=30) as client,
                    client.stream("GET", url) as response,
                ):
                    received = chunks_received(response.iter_bytes(2**20))

        assert received == ndjson_received()
        assert peak.bytes < MEMORY_BOUND, f"{peak.bytes / 2**20:.0f} MiB held at once"

    @pytest.mark.parametrize("flow", ["sync", "async"])
    def test_a_streamed_json_answer_longer_than_any_code_by_its_length_is_not_read_at_all(
        self, system: actors.TokenSystem, front: Host, flow: str
    ) -> None:
        canned, opened = sent_once_opened(LONG_JSON)
        front.answer(EXPORT, canned)
        auth = actors.httpx.FeishuAuth(system)
        url = front.url + EXPORT

        async def download() -> bytes:
            async with (
                httpx.AsyncClient(auth=auth, trust_env=False, timeout=10) as client,
                client.stream("GET", url) as response,
            ):
                opened.set()
                return await response.aread()

        if flow == "async":
            body = asyncio.run(download())
        else:
            with (
                httpx.Client(auth=auth, trust_env=False, timeout=10) as client,
                client.stream("GET", url) as response,
            ):
                opened.set()
                body = response.read()

        assert body == LONG_JSON

    @pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
    @pytest.mark.parametrize(
        ("read", "as_sent"),
        [
            (lambda r: r.read(), False),
            (lambda r: b"".join(r.iter_bytes(4096)), False),
            (lambda r: "".join(r.iter_lines()).encode(), False),
            (lambda r: b"".join(r.iter_raw(4096)), True),  # the bytes as they came, compressed
        ],
        ids=["read", "iter_bytes", "iter_lines", "iter_raw"],
    )
    def test_a_streamed_json_answer_whose_start_was_read_reads_whole_every_way(
        self,
        system: actors.TokenSystem,
        front: Host,
        compressed: bool,
        read: Callable[[httpx.Response], bytes],
        as_sent: bool,
    ) -> None:
        long_json = Canned(200, LONG_JSON)
        sent = gzipped(long_json) if compressed else long_json
        front.answer(EXPORT, chunked(sent))
        auth = actors.httpx.FeishuAuth(system)

        with (
            httpx.Client(auth=auth, trust_env=False, timeout=5) as client,
            client.stream("GET", front.url + EXPORT) as response,
        ):
            body = read(response)

        assert body == (sent.body if as_sent else LONG_JSON)

    @pytest.mark.parametrize("flow", ["sync", "async"])
    def test_a_compressed_invalid_token_answer_is_still_recovered_from(
        self, system: actors.TokenSystem, front: Host, flow: str
    ) -> None:
        front.answer(CHATS, gzipped(Canned.code(99991663)))

        response = send(actors.httpx.FeishuAuth(system), flow, "GET", front.url + CHATS)

        assert response.json()["code"] == 0
        assert len(front.seen(CHATS)) == 2 and system.metrics().invalidations == 1
