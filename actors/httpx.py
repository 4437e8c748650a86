"""HTTP client integration for ``httpx`` (extra ``httpx``): :class:`AsyncFeishuAuth`.

The same contract as ``FeishuAuth`` for ``requests``: a bearer token from the TokenSystem; an
invalid-token code in the JSON body (HTTP 200 or 400 alike) invalidates exactly the token sent
and the request goes once more with a fresh token, never more. With ``httpx.AsyncClient`` the
token is awaited without blocking the event loop; with ``httpx.Client`` it is fetched blocking.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from actors._config import TokenKind
from actors.requests import TokenTarget, is_token_invalid, response_code

__all__ = ["AsyncFeishuAuth"]


class AsyncFeishuAuth(httpx.Auth):
    """``httpx`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    Example::

        async with httpx.AsyncClient(auth=actors.AsyncFeishuAuth(system)) as client:
            response = await client.get(url)
    """

    # The flows below read a JSON answer's body themselves (httpx's own flows, which honour
    # ``requires_response_body``, are overridden): only a JSON answer can carry the code, and a
    # download streamed with ``client.stream()`` must not be read into memory here.

    def __init__(
        self,
        system: Any,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._target = TokenTarget(
            system, kind, tenant_key=tenant_key, app_id=app_id, timeout=timeout
        )

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        target = self._target
        token = await target.aget()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if _json_answer(response):
            await response.aread()
        if _token_invalid(response):
            await target.proxy.ainvalidate(token)
            request.headers["Authorization"] = f"Bearer {await target.aget()}"
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        target = self._target
        token = target.get()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if _json_answer(response):
            response.read()
        if _token_invalid(response):
            target.invalidate(token)
            request.headers["Authorization"] = f"Bearer {target.get()}"
            yield request


def _json_answer(response: httpx.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "").lower()


def _token_invalid(response: httpx.Response) -> bool:
    if not _json_answer(response):
        return False  # not JSON (a gateway's HTML page, a download): returned untouched
    try:
        body = response.json()
    except ValueError:  # JSON in name only: returned untouched
        return False
    return is_token_invalid(response_code(body))
