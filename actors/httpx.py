"""HTTP client integration for ``httpx`` (extra ``httpx``): :class:`FeishuAuth`, an
``httpx.Auth`` for ``httpx.AsyncClient`` and ``httpx.Client`` alike (``actors.AsyncFeishuAuth``).

The same contract as :class:`actors.FeishuAuth` for ``requests``: a bearer token from the
TokenSystem; an invalid-token code in the JSON body (HTTP 200 or 400 alike) invalidates exactly
the token sent and the request goes once more with a fresh token, never more. With
``httpx.AsyncClient`` the token is awaited without blocking the event loop; with ``httpx.Client``
it is fetched blocking.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Generator

import httpx

from actors._auth import AUTHORIZATION, TokenAuth, bearer, is_json, response_code

__all__ = ["AsyncFeishuAuth", "FeishuAuth"]


class FeishuAuth(TokenAuth, httpx.Auth):
    """``httpx`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    ``timeout`` bounds each wait for the system (a get, an invalidation) in seconds.

    Example::

        async with httpx.AsyncClient(auth=actors.AsyncFeishuAuth(system)) as client:
            response = await client.get(url)
    """

    # The flows below read a JSON answer's body themselves (httpx's own flows, which honour
    # ``requires_response_body``, are overridden): only a JSON answer can carry the code, and a
    # download streamed with ``client.stream()`` must not be read into memory here.

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        yield from self._target.flow(
            send=functools.partial(_authorized, request), read_code=_read_code
        )

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._target.aflow(
            send=functools.partial(_authorized, request), read_code=_aread_code
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


def _authorized(request: httpx.Request, token: str) -> httpx.Request:
    request.headers[AUTHORIZATION] = bearer(token)
    return request


def _read_code(response: httpx.Response) -> object:
    if not is_json(response.headers.get("Content-Type")):
        return None  # not JSON (a gateway's HTML page, a download): returned untouched
    response.read()
    return _code(response)


async def _aread_code(response: httpx.Response) -> object:
    if not is_json(response.headers.get("Content-Type")):
        return None
    await response.aread()
    return _code(response)


def _code(response: httpx.Response) -> object:
    try:
        return response_code(response.json())
    except ValueError:  # JSON in name only: returned untouched
        return None
