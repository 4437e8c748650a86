"""The official Feishu/Lark SDK (``lark-oapi``, extra ``lark``) with tokens from a TokenSystem.

The SDK keeps its own token cache unless told otherwise, and silently fetches a token itself
when a call forgets to pass one. :func:`lark_client` builds a ``lark_oapi.Client`` in
manual-token mode *without* the app secret, so the SDK can neither fetch nor cache a token: a
call without a token fails loudly instead. :func:`call` and :func:`acall` pass the system's
token in a ``RequestOption`` (a user's as its ``user_access_token``, with ``TokenKind.USER`` and
``user=open_id``) and, when the answer is an invalid-token code (99991663 / 99991664 / 99991671;
for a user token 99991668 / 99991677 too), invalidate exactly that token (a user's grant is
rotated once) and call once more, never more.

The policy's checks (``actors._auth``) hold here too. The token goes to the app's domain only:
a request whose ``uri`` names another host (a hand-built ``lark_oapi.BaseRequest`` passed to
``client.request``) is handed no token, and the SDK refuses to send it without one. A request
carrying a file (an upload) is not sent again after an invalid-token answer: the SDK turns its
body into a multipart encoder that reads the file once, so a second call would send other
bytes; the invalid-token answer is returned, its token invalidated. The SDK's answer does not
say which host it came from: on its blocking path ``requests`` follows redirects, and an answer
at the end of one the app's domain sent elsewhere is taken as the domain's.

Example::

    from lark_oapi.api.im.v1 import ListChatRequest
    from actors.lark import call, lark_client

    client = lark_client(system)
    response = call(system, client.im.v1.chat.list, ListChatRequest.builder().build())
    calendars = call(
        system, client.calendar.v4.calendar.list, ListCalendarRequest.builder().build(),
        TokenKind.USER, user=open_id,
    )
"""

from __future__ import annotations

import inspect
import io
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import lark_oapi

from actors._auth import TOKEN_TIMEOUT, TokenTarget, app_of, arun, run
from actors._config import AppConfig, AppType, TokenKind

if TYPE_CHECKING:
    from actors._system import TokenSystem

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


def lark_client(system: TokenSystem, *, app_id: str | None = None, **builder_options: Any) -> Any:
    """A ``lark_oapi.Client`` for one of the system's apps, in manual-token mode.

    The domain comes from the app's ``base_url``; ``builder_options`` are further
    ``lark_oapi.Client.builder()`` calls by name (e.g. ``timeout=5``, ``log_level=...``); the
    timeout is 10 seconds unless given. Options that would let the SDK fetch a token itself,
    or point the client at another domain or app (``app_secret``, ``client_assertion_provider``,
    ``domain``, ...), are refused with ``ValueError``.
    """
    app = app_of(system, app_id)
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
    system: TokenSystem,
    method: Callable[..., R],
    request: Any,
    kind: TokenKind = TokenKind.TENANT,
    *,
    tenant_key: str | None = None,
    app_id: str | None = None,
    user: str | None = None,
    timeout: float = TOKEN_TIMEOUT,
) -> R:
    """``method(request, option)`` with the system's token; once more after an invalid token.

    ``method`` is one of the SDK's blocking methods (``client.im.v1.chat.list``, ...); its
    coroutine twin (``alist``) is refused with ``TypeError`` before anything is sent: await
    :func:`acall` for those. ``kind``, ``tenant_key``, ``app_id`` and ``user`` name the token
    as for ``get_token`` (``user=`` is required for ``TokenKind.USER`` and refused for the
    other kinds with ``ValueError``, before anything is sent). ``timeout`` bounds each wait for
    the system (a get, an invalidation) in seconds, as ``get_token(...).get(timeout=...)`` does.
    """
    if _is_async(method):
        msg = f"lark.call: {_name(method)} is a coroutine function; await lark.acall(...) with it"
        raise TypeError(msg)
    target, url, resendable = _aimed(
        system, request, kind, tenant_key=tenant_key, app_id=app_id, user=user, timeout=timeout
    )
    flow: Generator[R, R, None] = target.flow(
        url=url,
        send=_sender(method, request, target.kind),
        answered_from=lambda _: url,
        read_code=_code,
        rewind=lambda: resendable,
    )
    return run(flow)


async def acall(
    system: TokenSystem,
    method: Callable[..., Awaitable[R]],
    request: Any,
    kind: TokenKind = TokenKind.TENANT,
    *,
    tenant_key: str | None = None,
    app_id: str | None = None,
    user: str | None = None,
    timeout: float = TOKEN_TIMEOUT,
) -> R:
    """:func:`call` for the SDK's coroutine methods (``client.im.v1.chat.alist``, ...).

    A blocking method is refused with ``TypeError`` before anything is sent: use :func:`call`
    for those. ``timeout`` bounds each await of the system in seconds (``TimeoutError``).
    """
    if not _is_async(method):
        msg = f"lark.acall: {_name(method)} is not a coroutine function; use lark.call(...) with it"
        raise TypeError(msg)
    target, url, resendable = _aimed(
        system, request, kind, tenant_key=tenant_key, app_id=app_id, user=user, timeout=timeout
    )
    aflow: AsyncGenerator[Awaitable[R], R] = target.aflow(
        url=url,
        send=_sender(method, request, target.kind),
        answered_from=lambda _: url,
        read_code=_acode,
        rewind=lambda: resendable,
    )
    return await arun(aflow)


def _aimed(
    system: TokenSystem,
    request: Any,
    kind: TokenKind,
    *,
    tenant_key: str | None,
    app_id: str | None,
    user: str | None,
    timeout: float,
) -> tuple[TokenTarget, str, bool]:
    """The token a call sends, where its request goes, and whether it can be sent again."""
    target = TokenTarget.of(
        system, kind, tenant_key=tenant_key, app_id=app_id, user=user, timeout=timeout
    )
    return target, _url(app_of(system, app_id), request), _resendable(request)


def _sender(method: Callable[..., R], request: Any, kind: TokenKind) -> Callable[[str | None], R]:
    return lambda token: method(request, _option(kind, token))


def _url(app: AppConfig, request: Any) -> str:
    """Where the SDK sends ``request``: its ``uri`` after the app's domain, unless the ``uri``
    is a URL of its own (as ``lark_oapi.core.http.Transport`` builds it)."""
    uri = getattr(request, "uri", None)
    uri = uri if isinstance(uri, str) else ""
    return uri if uri.startswith(("http://", "https://")) else app.base_url + uri


def _resendable(request: Any) -> bool:
    """Whether the SDK would send ``request`` again as it sent it first: not with a file in its
    body (the values the SDK's form encoding takes for files), read once by the first send."""
    body = getattr(request, "body", None)
    fields = body if isinstance(body, dict) else getattr(body, "__dict__", {})
    return not any(isinstance(value, io.IOBase | tuple) for value in fields.values())


def _code(response: object) -> object:
    return getattr(response, "code", None)  # the SDK has parsed the JSON answer already


async def _acode(response: object) -> object:
    return _code(response)


def _is_async(method: Callable[..., Any]) -> bool:
    # An object whose __call__ is a coroutine function is one, too.
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(type(method).__call__)


def _name(method: Callable[..., Any]) -> str:
    return getattr(method, "__qualname__", type(method).__qualname__)


def _option(kind: TokenKind, token: str | None) -> Any:
    builder = lark_oapi.RequestOption.builder()
    if token is None:
        return builder.build()  # another host's request: the SDK refuses it without a token
    if kind is TokenKind.APP:
        return builder.app_access_token(token).build()
    if kind is TokenKind.USER:
        return builder.user_access_token(token).build()
    return builder.tenant_access_token(token).build()
