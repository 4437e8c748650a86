"""``actors.requests.FeishuAuth`` (``actors.FeishuAuth``): the invalid-token contract with a
``requests.Session``, and what only ``requests`` does (redirects followed by the session, streamed
downloads), against the embedded fake server over real loopback HTTP."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import SystemFactory
from tests.test_auth import (
    CHATS,
    LIST_CHATS,
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
    WithHosts,
    business,
    chunked,
    chunks_received,
    gzipped,
    ndjson,
    ndjson_received,
    offset,
    peak_memory,
    pipe,
    sent_once_opened,
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
            call.method,
            call.url or self._base + call.path,
            json=call.json,
            params=call.params,
            headers=call.headers,
            timeout=5,
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


# --- a resend sends the same bytes, or is not made; a stream is read only as far as its code -----

MESSAGE = json.dumps(SEND_TEXT.json).encode()
EXPORT = "/open-apis/drive/v1/export"


class TestBodiesAndStreams(WithHosts):
    @pytest.fixture
    def system(self, make_system: SystemFactory, front_app: actors.AppConfig) -> actors.TokenSystem:
        return make_system(front_app)

    def post_message(self, system: actors.TokenSystem, front: Host, body: Any) -> requests.Response:
        with session() as client:
            return client.post(
                front.url + MESSAGES,
                params=SEND_TEXT.params,
                data=body,
                headers={"Content-Type": "application/json"},
                auth=actors.FeishuAuth(system),
                timeout=5,
            )

    @pytest.mark.parametrize(
        "make_body",
        [lambda: (MESSAGE[i : i + 7] for i in range(0, len(MESSAGE), 7)), lambda: pipe(MESSAGE)],
        ids=["generator", "pipe"],
    )
    def test_a_body_that_cannot_be_sent_again_is_not_resent_and_its_answer_is_returned(
        self,
        system: actors.TokenSystem,
        server: FakeFeishu,
        front: Host,
        make_body: Callable[[], Any],
    ) -> None:
        stale = warm(system)
        server.rotate()

        response = self.post_message(system, front, make_body())

        assert response.status_code == 400 and response.json()["code"] == 99991663
        assert [s.body for s in front.seen(MESSAGES)] == [MESSAGE]
        # The token is still known bad: the caller's own retry gets a fresh one.
        assert system.metrics().invalidations == 1 and warm(system) != stale

    def test_a_seekable_file_is_rewound_to_where_it_started_and_resent_whole(
        self, system: actors.TokenSystem, server: FakeFeishu, front: Host
    ) -> None:
        warm(system)
        server.rotate()
        response = self.post_message(system, front, offset(MESSAGE))

        assert response.status_code == 200 and response.json()["code"] == 0
        assert [s.body for s in front.seen(MESSAGES)] == [MESSAGE, MESSAGE]

    def test_a_streamed_json_download_is_never_read_whole_and_reaches_the_caller_intact(
        self, system: actors.TokenSystem, front: Host
    ) -> None:
        warm(system)
        front.answer(EXPORT, Canned(200, ndjson, "application/x-ndjson"))

        with (
            peak_memory() as peak,
            session() as client,
            client.get(
                front.url + EXPORT, auth=actors.FeishuAuth(system), stream=True, timeout=30
            ) as response,
        ):
            received = chunks_received(response.iter_content(2**20))

        assert received == ndjson_received()
        assert peak.bytes < MEMORY_BOUND, f"{peak.bytes / 2**20:.0f} MiB held at once"

    def test_a_streamed_json_answer_longer_than_any_code_by_its_length_is_not_read_at_all(
        self, system: actors.TokenSystem, front: Host
    ) -> None:
        canned, opened = sent_once_opened(LONG_JSON)
        front.answer(EXPORT, canned)

        with (
            session() as client,
            client.get(
                front.url + EXPORT, auth=actors.FeishuAuth(system), stream=True, timeout=10
            ) as response,
        ):
            opened.set()
            assert response.content == LONG_JSON

    @pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
    @pytest.mark.parametrize(
        "read",
        [
            lambda r: r.content,
            lambda r: b"".join(r.iter_content(4096)),
            lambda r: r.raw.read(decode_content=True),
            lambda r: b"".join(iter(functools.partial(r.raw.read, 4096, decode_content=True), b"")),
            lambda r: b"".join(r.raw.stream(4096, decode_content=True)),
        ],
        ids=["content", "iter_content", "raw.read", "raw.read-in-pieces", "raw.stream"],
    )
    def test_a_streamed_json_answer_whose_start_was_read_reads_whole_every_way(
        self,
        system: actors.TokenSystem,
        front: Host,
        compressed: bool,
        read: Callable[[requests.Response], bytes],
    ) -> None:
        long_json = Canned(200, LONG_JSON)
        front.answer(EXPORT, chunked(gzipped(long_json) if compressed else long_json))

        with (
            session() as client,
            client.get(
                front.url + EXPORT, auth=actors.FeishuAuth(system), stream=True, timeout=5
            ) as response,
        ):
            assert read(response) == LONG_JSON

    def test_a_streamed_compressed_invalid_token_answer_is_still_recovered_from(
        self, system: actors.TokenSystem, front: Host
    ) -> None:
        front.answer(CHATS, gzipped(Canned.code(99991663)))

        with (
            session() as client,
            client.get(
                front.url + CHATS, auth=actors.FeishuAuth(system), stream=True, timeout=5
            ) as response,
        ):
            assert response.json()["code"] == 0

        assert len(front.seen(CHATS)) == 2 and system.metrics().invalidations == 1
