"""HTTP client integration for ``requests``: a bearer-token ``AuthBase`` that recovers once
from an invalid-token answer.

Feishu reports an invalid token (99991663 / 99991664 / 99991671) in the JSON body, with HTTP 200
or 400 alike, so a 401-based retry never fires. :class:`FeishuAuth` reads the body's ``code``,
invalidates exactly the token it sent (compare-and-invalidate: a token another request already
replaced is left alone), and sends the request once more with a fresh token, never more. Other
codes (99991672 missing scope, ...) and non-JSON answers (a gateway's HTML 502) come back
untouched.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from actors._config import TokenKind
from actors.feishu import _protocol as feishu

__all__ = [
    "TOKEN_INVALID_CODES",
    "FeishuAuth",
    "TokenTarget",
    "bearer_of",
    "is_token_invalid",
    "response_code",
]


TOKEN_INVALID_CODES: frozenset[int] = feishu.TOKEN_INVALID_CODES


def is_token_invalid(code: object) -> bool:
    """Whether a Feishu ``code`` means "this access token is invalid: refetch and retry once"."""
    return isinstance(code, int) and not isinstance(code, bool) and code in TOKEN_INVALID_CODES


def response_code(body: object) -> object:
    """The ``code`` of a parsed Feishu JSON answer, or None."""
    return body.get(feishu.CODE_FIELD) if isinstance(body, dict) else None


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header and header.startswith("Bearer "):
        return header[len("Bearer ") :] or None
    return None


class TokenTarget:
    """Which token an HTTP auth sends (system, kind, tenant, app) and how it gets one: the part
    the ``requests`` and ``httpx`` auths share."""

    def __init__(
        self,
        system: Any,  # a TokenSystem (typed loosely: this module must not import _system)
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.proxy = system.proxy
        self.kind = kind
        self.tenant_key = tenant_key
        self.app_id = app_id
        self.timeout = timeout

    def get(self) -> str:
        future = self.proxy.get_token(self.kind, tenant_key=self.tenant_key, app_id=self.app_id)
        token: str = future.get(timeout=self.timeout)
        return token

    async def aget(self) -> str:
        token: str = await self.proxy.aget_token(
            self.kind, tenant_key=self.tenant_key, app_id=self.app_id
        )
        return token

    def invalidate(self, token: str) -> None:
        self.proxy.invalidate(token).get(timeout=self.timeout)


class FeishuAuth(AuthBase):
    """``requests`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    Example::

        session.auth = actors.FeishuAuth(system)                 # the only app's tenant token
        session.get(url, auth=actors.FeishuAuth(system, tenant_key=tk, app_id="cli_x"))
    """

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

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._target.get()}"
        request.register_hook("response", self._recover)  # type: ignore[no-untyped-call]
        return request

    def _recover(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        sent = response.request
        if getattr(sent, "_feishu_resent", False) or not _says_token_invalid(response, kwargs):
            return response
        token = bearer_of(sent.headers.get("Authorization"))
        if token is not None:
            self._target.invalidate(token)
        response.close()  # the answer was read: its connection goes back to the pool
        again = sent.copy()
        again.headers["Authorization"] = f"Bearer {self._target.get()}"
        again._feishu_resent = True  # type: ignore[attr-defined]  # the once-only guard
        resent = response.connection.send(again, **kwargs)
        resent.history.append(response)
        resent.request = again
        return resent


def _says_token_invalid(response: requests.Response, send_kwargs: dict[str, Any]) -> bool:
    content_type = response.headers.get("Content-Type", "")
    if send_kwargs.get("stream") and "json" not in content_type:
        return False  # never read a streamed download just to look for a code
    try:
        body = response.json()
    except ValueError:  # HTML from a gateway, an empty body: not ours to judge
        return False
    return is_token_invalid(response_code(body))
