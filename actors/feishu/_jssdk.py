"""What a web page needs from the server to use Feishu's JSSDK (``h5sdk.config``): the
signature made from the tenant's jsapi_ticket (``docs/feishu-protocol.md``, "jsapi_ticket").

The page signs ``sha1("jsapi_ticket=<ticket>&noncestr=<nonce>&timestamp=<ms>&url=<url>")``
(hex), the timestamp in milliseconds and the URL without its ``#fragment`` (the browser never
sends the fragment, so the page's own ``location.href.split("#")[0]`` is what it signs).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from urllib.parse import urlsplit

import pykka

from actors._config import AppConfig, TokenKind, resolve_app
from actors._messages import failed_future

__all__ = ["JssdkPages", "jsapi_config", "jsapi_signature", "page_url"]

_URL_MAX = 4096  # a URL longer than this is no page's


def page_url(url: object) -> str:
    """``url`` as the JSSDK signs it: an absolute http(s) URL without its fragment (as the page
    reads it, ``location.href.split("#")[0]``); ValueError else."""
    if not isinstance(url, str):
        msg = f"url must be the page's absolute http(s) URL, got {type(url).__name__}"
        raise ValueError(msg)
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 literal
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        msg = "url must be the page's absolute http(s) URL"
        raise ValueError(msg)
    page = url.split("#", 1)[0]
    if len(page) > _URL_MAX or not page.isprintable() or any(c.isspace() for c in page):
        msg = "url must be a printable URL without spaces, at most 4096 characters"
        raise ValueError(msg)
    return page


def jsapi_signature(ticket: str, url: str, nonce: str, timestamp_ms: int) -> str:
    """The ``signature`` of ``h5sdk.config`` for ``url`` (its fragment dropped): the SHA-1 hex
    of ``jsapi_ticket=…&noncestr=…&timestamp=…&url=…``."""
    if not isinstance(ticket, str) or not ticket:
        msg = "ticket must be the tenant's jsapi_ticket"
        raise ValueError(msg)
    if not isinstance(nonce, str) or not nonce or "&" in nonce:
        msg = "nonce must be a non-empty string without '&'"
        raise ValueError(msg)
    if not isinstance(timestamp_ms, int) or isinstance(timestamp_ms, bool) or timestamp_ms < 0:
        msg = "timestamp_ms must be Unix milliseconds (an int >= 0)"
        raise ValueError(msg)
    text = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp_ms}&url={page_url(url)}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()  # SHA-1: the JSSDK's, not ours to pick


def jsapi_config(app_id: str, ticket: str, url: str) -> dict[str, str | int]:
    """The arguments of ``h5sdk.config`` for ``url``: ``appId``, ``timestamp`` (now, in ms),
    ``nonceStr`` (fresh, random) and ``signature``."""
    nonce = secrets.token_urlsafe(12)
    timestamp_ms = time.time_ns() // 1_000_000
    return {
        "appId": app_id,
        "timestamp": timestamp_ms,
        "nonceStr": nonce,
        "signature": jsapi_signature(ticket, url, nonce, timestamp_ms),
    }


class JssdkPages:
    """The JSSDK half of the token API (``system.proxy``), on the proxy's own gets."""

    _apps: dict[str, AppConfig]

    def get_token(
        self,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> pykka.Future[str]:
        raise NotImplementedError

    async def aget_token(
        self,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
    ) -> str:
        raise NotImplementedError

    def jsapi_config(
        self, url: str, *, tenant_key: str | None = None, app_id: str | None = None
    ) -> pykka.Future[dict[str, str | int]]:
        """A future of ``h5sdk.config``'s arguments for the page at ``url``, signed with the
        tenant's cached jsapi_ticket (see ``TokenSystem.jsapi_config``)."""
        try:
            page, app = page_url(url), resolve_app(self._apps, app_id)
        except ValueError as exc:
            return failed_future(exc)
        ticket = self.get_token(TokenKind.JSAPI_TICKET, tenant_key=tenant_key, app_id=app_id)
        return ticket.map(lambda t: jsapi_config(app.app_id, t, page))

    async def ajsapi_config(
        self, url: str, *, tenant_key: str | None = None, app_id: str | None = None
    ) -> dict[str, str | int]:
        """``jsapi_config`` for coroutines."""
        page, app = page_url(url), resolve_app(self._apps, app_id)
        ticket = await self.aget_token(TokenKind.JSAPI_TICKET, tenant_key=tenant_key, app_id=app_id)
        return jsapi_config(app.app_id, ticket, page)
