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

from actors._auth import is_token_invalid, response_code
from actors._config import TokenKind

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
        self._system = system
        self._kind = kind
        self._tenant_key = tenant_key
        self._app_id = app_id
        self._timeout = timeout

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        proxy = self._system.proxy
        token = await proxy.aget_token(self._kind, tenant_key=self._tenant_key, app_id=self._app_id)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if _json_answer(response):
            await response.aread()
        if _token_invalid(response):
            await proxy.ainvalidate(token)
            token = await proxy.aget_token(
                self._kind, tenant_key=self._tenant_key, app_id=self._app_id
            )
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        proxy = self._system.proxy
        token = self._get()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if _json_answer(response):
            response.read()
        if _token_invalid(response):
            proxy.invalidate(token).get(timeout=self._timeout)
            request.headers["Authorization"] = f"Bearer {self._get()}"
            yield request

    def _get(self) -> str:
        future = self._system.proxy.get_token(
            self._kind, tenant_key=self._tenant_key, app_id=self._app_id
        )
        token: str = future.get(timeout=self._timeout)
        return token


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
