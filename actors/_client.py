"""The Feishu auth client: the five token endpoints, one shared response handler.

Every call has a ``(connect, read)`` timeout, the JSON body is parsed whatever the HTTP status
(Feishu reports errors with 200, 400 or 429 alike), and every outcome is classified into a
:class:`Grant` or one of the typed errors of ``actors._errors``. One call is one attempt: retries
are the TokenActor's business, so the errors raised here carry ``attempts=1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import requests

from actors._config import AppConfig, AppType, TokenKind
from actors._errors import AppTicketError, AuthError, RateLimitedError, UpstreamError

__all__ = ["APP_TOKEN_INVALID_CODES", "FeishuAuthClient", "Grant"]

_PATHS = {
    (AppType.SELF_BUILT, TokenKind.APP): "/open-apis/auth/v3/app_access_token/internal",
    (AppType.MARKETPLACE, TokenKind.APP): "/open-apis/auth/v3/app_access_token",
    (AppType.SELF_BUILT, TokenKind.TENANT): "/open-apis/auth/v3/tenant_access_token/internal",
    (AppType.MARKETPLACE, TokenKind.TENANT): "/open-apis/auth/v3/tenant_access_token",
}
_RESEND_PATH = "/open-apis/auth/v3/app_ticket/resend"
_TOKEN_FIELD = {TokenKind.APP: "app_access_token", TokenKind.TENANT: "tenant_access_token"}

_PERMANENT_CODES = frozenset({10003, 10014, 99991543})
_TICKET_INVALID = 10012
_RATE_LIMITED = 99991400
# A marketplace tenant request rejected because the app token it carried is stale.
APP_TOKEN_INVALID_CODES = frozenset({99991663, 99991664, 99991671})
_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A token and its remaining lifetime in seconds, as the endpoint returned them."""

    token: str = dataclasses.field(repr=False)
    expire: float


class FeishuAuthClient:
    """Speaks the auth v3 endpoints over one pooled ``requests.Session``."""

    def __init__(self, session: requests.Session, *, timeout: tuple[float, float]) -> None:
        self._session = session
        self._timeout = timeout

    def fetch(
        self,
        app: AppConfig,
        kind: TokenKind,
        *,
        tenant_key: str | None = None,
        app_ticket: str | None = None,
        app_token: str | None = None,
    ) -> Grant:
        """One attempt at a token of ``kind`` for ``app`` (marketplace: ticket or app token)."""
        body: dict[str, str]
        if app.app_type is AppType.MARKETPLACE and kind is TokenKind.TENANT:
            body = {"app_access_token": app_token or "", "tenant_key": tenant_key or ""}
        elif app.app_type is AppType.MARKETPLACE:
            if not app_ticket:  # Feishu must never see an empty ticket (FEISHU.md)
                raise AppTicketError(app.app_id, "no app_ticket received yet")
            body = {"app_id": app.app_id, "app_secret": app.app_secret, "app_ticket": app_ticket}
        else:
            body = {"app_id": app.app_id, "app_secret": app.app_secret}
        data = self._post(app, _PATHS[(app.app_type, kind)], body)
        return _grant(data, _TOKEN_FIELD[kind])

    def resend_ticket(self, app: AppConfig) -> None:
        """Ask Feishu to push the app_ticket event again; the ticket never comes back here."""
        self._post(app, _RESEND_PATH, {"app_id": app.app_id, "app_secret": app.app_secret})

    def _post(self, app: AppConfig, path: str, body: dict[str, str]) -> dict[str, Any]:
        try:
            response = self._session.post(
                app.base_url + path, json=body, headers=_HEADERS, timeout=self._timeout
            )
        except requests.Timeout as exc:
            raise UpstreamError(None, None, 1, detail=f"timed out ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise UpstreamError(None, None, 1, detail=f"{type(exc).__name__}") from None
        return _classify(app, response)


def _classify(app: AppConfig, response: requests.Response) -> dict[str, Any]:
    """The one response handler: success body, or the typed error it stands for."""
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("code"), int):
        kind = response.headers.get("Content-Type", "unknown content").split(";")[0]
        raise UpstreamError(None, status, 1, detail=f"non-JSON or malformed body ({kind})")
    code: int = data["code"]
    msg = str(data.get("msg", ""))[:200]
    if code == 0:
        return data
    if code in _PERMANENT_CODES:
        raise AuthError(code, msg)
    if code == _TICKET_INVALID:
        raise AppTicketError(app.app_id, f"Feishu rejected the app_ticket (code {code})")
    if code == _RATE_LIMITED or status == 429:
        raise RateLimitedError(
            code,
            status,
            1,
            retry_after=_reset_seconds(response.headers.get("x-ogw-ratelimit-reset")),
        )
    # Unknown codes are treated as transient: a retry costs little and the final error names the
    # code, whereas a wrongly permanent classification would fail every waiter at once.
    raise UpstreamError(code, status, 1, detail=msg)


def _grant(data: dict[str, Any], field: str) -> Grant:
    token = data.get(field)
    expire = data.get("expire")
    if (
        not isinstance(token, str)
        or not token
        or not isinstance(expire, int | float)
        or expire <= 0
    ):
        raise UpstreamError(0, None, 1, detail=f"success body without a usable {field}/expire")
    return Grant(token, float(expire))


def _reset_seconds(header: str | None) -> float | None:
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None
