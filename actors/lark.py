"""The official Feishu/Lark SDK (``lark-oapi``, extra ``lark``) with tokens from a TokenSystem.

The SDK keeps its own token cache unless told otherwise, and silently fetches a token itself
when a call forgets to pass one. :func:`lark_client` builds a ``lark_oapi.Client`` in
manual-token mode *without* the app secret, so the SDK can neither fetch nor cache a token: a
call without a token fails loudly instead. :func:`call` and :func:`acall` pass the system's
token in a ``RequestOption`` and, when the answer is an invalid-token code (99991663 / 99991664
/ 99991671), invalidate exactly that token and call once more, never more.

Example::

    from lark_oapi.api.im.v1 import ListChatRequest
    from actors.lark import call, lark_client

    client = lark_client(system)
    response = call(system, client.im.v1.chat.list, ListChatRequest.builder().build())
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import lark_oapi

from actors._config import AppType, TokenKind
from actors.requests import is_token_invalid

__all__ = ["acall", "call", "lark_client"]

R = TypeVar("R")

# Builder options the TokenSystem owns. With any of the first four the SDK fetches (or caches) a
# token itself: a client-assertion provider even overwrites the token a call passes. The last
# three would send the app's token to another domain, or under another app.
_MANAGED = frozenset(
    {
        "app_secret",
        "enable_set_token",
        "cache",
        "app_ticket",
        "client_assertion_provider",
        "domain",
        "app_id",
        "app_type",
    }
)
# lark-oapi had no HTTP timeout by default before 1.7 (docs/feishu-protocol.md): every call here
# gets one.
_DEFAULT_TIMEOUT = 10.0


def lark_client(system: Any, *, app_id: str | None = None, **builder_options: Any) -> Any:
    """A ``lark_oapi.Client`` for one of the system's apps, in manual-token mode.

    The domain comes from the app's ``base_url``; ``builder_options`` are further
    ``lark_oapi.Client.builder()`` calls by name (e.g. ``timeout=5``, ``log_level=...``); the
    timeout is 10 seconds unless given. Options that would let the SDK fetch a token itself,
    or point the client at another domain or app (``app_secret``, ``client_assertion_provider``,
    ``domain``, ...), are refused with ``ValueError``.
    """
    app = _app(system, app_id)
    builder = (
        lark_oapi.Client.builder()
        .app_id(app.app_id)
        .domain(app.base_url)
        .app_type(
            lark_oapi.AppType.ISV if app.app_type is AppType.MARKETPLACE else lark_oapi.AppType.SELF
        )
        .enable_set_token(True)
        .timeout(_DEFAULT_TIMEOUT)
    )
    for name, value in builder_options.items():
        if name in _MANAGED:
            msg = f"lark_client: {name} is managed by the TokenSystem, not the SDK"
            raise ValueError(msg)
        builder = getattr(builder, name)(value)
    return builder.build()


def call(
    system: Any,
    method: Callable[..., R],
    request: Any,
    *,
    tenant_key: str | None = None,
    app_id: str | None = None,
    kind: TokenKind = TokenKind.TENANT,
    timeout: float = 10.0,
) -> R:
    """``method(request, option)`` with the system's token; once more after an invalid token."""
    proxy = system.proxy
    token: str = proxy.get_token(kind, tenant_key=tenant_key, app_id=app_id).get(timeout=timeout)
    response = method(request, _option(kind, token))
    if is_token_invalid(getattr(response, "code", None)):
        proxy.invalidate(token).get(timeout=timeout)
        token = proxy.get_token(kind, tenant_key=tenant_key, app_id=app_id).get(timeout=timeout)
        response = method(request, _option(kind, token))
    return response


async def acall(
    system: Any,
    method: Callable[..., Awaitable[R]],
    request: Any,
    *,
    tenant_key: str | None = None,
    app_id: str | None = None,
    kind: TokenKind = TokenKind.TENANT,
) -> R:
    """:func:`call` for the SDK's async methods (``client.im.v1.chat.alist``, ...)."""
    proxy = system.proxy
    token = await proxy.aget_token(kind, tenant_key=tenant_key, app_id=app_id)
    response = await method(request, _option(kind, token))
    if is_token_invalid(getattr(response, "code", None)):
        await proxy.ainvalidate(token)
        token = await proxy.aget_token(kind, tenant_key=tenant_key, app_id=app_id)
        response = await method(request, _option(kind, token))
    return response


def _option(kind: TokenKind, token: str) -> Any:
    builder = lark_oapi.RequestOption.builder()
    if kind is TokenKind.APP:
        return builder.app_access_token(token).build()
    return builder.tenant_access_token(token).build()


def _app(system: Any, app_id: str | None) -> Any:
    apps = system.apps
    if app_id is None:
        if len(apps) != 1:
            msg = f"app_id is required: this system serves {len(apps)} apps"
            raise ValueError(msg)
        return next(iter(apps.values()))
    if app_id not in apps:
        msg = f"unknown app_id {app_id!r}; this system serves: {', '.join(apps)}"
        raise ValueError(msg)
    return apps[app_id]
