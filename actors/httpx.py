"""HTTP client integration for ``httpx`` (extra ``httpx``): :class:`FeishuAuth`, an
``httpx.Auth`` for ``httpx.AsyncClient`` and ``httpx.Client`` alike (``actors.AsyncFeishuAuth``).

The same contract as :class:`actors.FeishuAuth` for ``requests``: a bearer token from the
TokenSystem (a user's too), sent to the app's own host only; an invalid-token code in the JSON
body (HTTP 200 or 400 alike) invalidates exactly the token sent and the request goes once more
with a fresh token, never more, if its body can be sent again. With ``httpx.AsyncClient`` the
token is awaited without blocking the event loop; with ``httpx.Client`` it is fetched blocking.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator

import httpx

from actors._auth import (
    AUTHORIZATION,
    CODE_PREFIX,
    TokenAuth,
    bearer,
    body_start,
    code_of,
    may_carry_code,
    rewind,
)

__all__ = ["AsyncFeishuAuth", "FeishuAuth"]


class FeishuAuth(TokenAuth, httpx.Auth):
    """``httpx`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    The token goes only to the app's own origin (the scheme, host and port of its
    ``base_url``) and to the ``hosts`` listed: ``hosts=("open.larksuite.com",
    "https://gateway.example:8443")`` (a bare host means ``https://`` on port 443). A request
    to any other host goes out without our ``Authorization`` (an ``Authorization`` the caller
    set is theirs and stays), no token is fetched for it, and its answer never invalidates
    one: nor does the last answer of a redirect chain (``follow_redirects=True``) that left
    those hosts (httpx drops the header when a redirect leaves the origin).

    On an invalid-token answer the request is sent once more only if its body can be sent again
    byte for byte: ``content=`` bytes or str, ``data=``, ``json=``, ``files=`` whose files are
    seekable, or ``content=`` a seekable file (rewound to where its first send began). A
    generator, an async iterator or another one-way body is not resent: the invalid-token answer
    is returned as it came, with its token invalidated so that the caller's own retry gets a
    fresh one. A JSON answer is read only as far as its first 64 KiB to see a code (one without
    a ``Content-Length`` is handed over once 64 KiB or its end arrived); a download streamed
    with ``client.stream()`` still reads whole, ``iter_raw()`` included.

    ``app_id`` names the app (required when the system serves several: its ``base_url`` is
    where the token may go); an unknown one is refused with ``ValueError`` here, as is a
    ``hosts`` entry that is not a host or an origin, or is ``http://`` beyond loopback.
    ``timeout`` bounds each wait for the system (a get, an invalidation) in seconds.

    ``FeishuAuth(system, TokenKind.USER, user=open_id)`` sends that user's access token, and
    recovers from its 99991668 / 99991677 with one rotation, as :class:`actors.FeishuAuth` for
    ``requests`` does.

    Example::

        async with httpx.AsyncClient(auth=actors.AsyncFeishuAuth(system)) as client:
            response = await client.get(url)
    """

    # The flows below read a JSON answer's body themselves (httpx's own flows, which honour
    # ``requires_response_body``, are overridden): only a JSON answer can carry the code, and a
    # download streamed with ``client.stream()`` must not be read into memory here: its first
    # chunks are replayed in front of the rest.

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        yield from self._target.flow(
            url=str(request.url),
            send=functools.partial(_authorized, request),
            answered_from=_answered_from,
            read_code=_read_code,
            rewind=_rewinder(request),
        )

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._target.aflow(
            url=str(request.url),
            send=functools.partial(_authorized, request),
            answered_from=_answered_from,
            read_code=_aread_code,
            rewind=_rewinder(request),
        )
        # An async generator cannot ``yield from``: each request and answer is passed on by hand.
        async with contextlib.aclosing(flow):
            try:
                outgoing = await anext(flow)
                while True:
                    outgoing = await flow.asend((yield outgoing))
            except StopAsyncIteration:
                return


AsyncFeishuAuth = FeishuAuth  # the name ``actors`` exports it under


def _authorized(request: httpx.Request, token: str | None) -> httpx.Request:
    if token is not None:
        request.headers[AUTHORIZATION] = bearer(token)
    return request


def _answered_from(response: httpx.Response) -> str:
    return str(response.url)  # the request's: the last of a redirect chain


def _rewinder(request: httpx.Request) -> Callable[[], bool]:
    """How ``request``'s body is made ready to be sent again (see ``actors._auth.rewind``)."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return _held  # content=, data=, json=: httpx holds the bytes
    fields = getattr(stream, "fields", None)
    if isinstance(fields, list):  # files=: httpx reads each file from its beginning every time
        files = [getattr(field, "file", b"") for field in fields]
        return lambda: all(rewind(file, 0) for file in files)
    # content=<file or iterator>: httpx reads it on from where it stands. Its source is private
    # to httpx; without it, the body counts as one that cannot be sent again.
    source = getattr(stream, "_stream", None) if isinstance(stream, httpx.SyncByteStream) else None
    if source is None:
        return _never
    return functools.partial(rewind, source, body_start(source))


def _held() -> bool:
    return True


def _never() -> bool:
    return False


def _read_code(response: httpx.Response) -> object:
    if not _may_carry_code(response):
        return None  # not JSON (a gateway's HTML page, a download) or too long: untouched
    if response.is_stream_consumed:
        return code_of(response.content)  # held whole already (a stand-in transport's answer)
    stream = response.stream
    if not isinstance(stream, httpx.SyncByteStream):
        return None
    chunks = iter(stream)
    prefix = _prefix(chunks)
    response.stream = _SyncReplay(prefix, chunks, stream)
    return _code_in(response, prefix)


async def _aread_code(response: httpx.Response) -> object:
    if not _may_carry_code(response):
        return None
    if response.is_stream_consumed:
        return code_of(response.content)
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        return None
    chunks = aiter(stream)
    prefix = [chunk async for chunk in _aprefix(chunks)]
    response.stream = _AsyncReplay(prefix, chunks, stream)
    return _code_in(response, prefix)


def _may_carry_code(response: httpx.Response) -> bool:
    headers = response.headers
    return may_carry_code(headers.get("Content-Type"), headers.get("Content-Length"))


def _code_in(response: httpx.Response, prefix: list[bytes]) -> object:
    """The code of an answer whose first raw chunks are ``prefix``: none unless they are all of
    it. They are decoded apart, so the answer itself stays unread for the caller."""
    raw = b"".join(prefix)
    if len(raw) > CODE_PREFIX:
        return None  # longer than any invalid-token answer: left whole for the caller
    whole = httpx.Response(
        response.status_code, headers=response.headers, stream=httpx.ByteStream(raw)
    )
    decoded = bytearray()
    try:
        for chunk in whole.iter_bytes():
            decoded += chunk
            if len(decoded) > CODE_PREFIX:
                return None
    except httpx.DecodingError:  # a body its Content-Encoding does not decode
        return None
    return code_of(bytes(decoded))


def _prefix(chunks: Iterator[bytes]) -> list[bytes]:
    """The first chunks of an answer, up to just past :data:`CODE_PREFIX` bytes if it has them."""
    prefix, size = [], 0
    while size <= CODE_PREFIX and (chunk := next(chunks, None)) is not None:
        prefix.append(chunk)
        size += len(chunk)
    return prefix


async def _aprefix(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    size = 0
    while size <= CODE_PREFIX and (chunk := await anext(chunks, None)) is not None:
        yield chunk
        size += len(chunk)


class _SyncReplay(httpx.SyncByteStream):
    """An answer's raw bytes: the chunks already read to see its code, then the rest."""

    def __init__(self, prefix: list[bytes], rest: Iterator[bytes], stream: httpx.SyncByteStream):
        self._prefix = prefix
        self._rest = rest
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        prefix, self._prefix = self._prefix, []
        yield from prefix
        yield from self._rest

    def close(self) -> None:
        self._stream.close()


class _AsyncReplay(httpx.AsyncByteStream):
    """:class:`_SyncReplay` for an async client's answer."""

    def __init__(
        self, prefix: list[bytes], rest: AsyncIterator[bytes], stream: httpx.AsyncByteStream
    ):
        self._prefix = prefix
        self._rest = rest
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        prefix, self._prefix = self._prefix, []
        for chunk in prefix:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
