"""The Feishu auth client: the default token source, speaking the auth v3 endpoints over HTTP.

Every call has a ``(connect, read)`` timeout, the JSON body is parsed whatever the HTTP status
(Feishu reports errors with 200, 400 or 429 alike), and every outcome is classified, through the
protocol table of ``actors._feishu``, into a :class:`Grant` or one of the typed errors of
``actors._errors``. One call is one attempt: retries are the TokenActor's business, so the errors
raised here carry ``attempts=1``.
"""

from __future__ import annotations

import math
from typing import Any

import requests

from actors import _feishu as feishu
from actors._config import AppConfig
from actors._errors import AppTicketError, AuthError, RateLimitedError, UpstreamError
from actors._source import Grant, TokenRequest

__all__ = ["FeishuAuthClient"]

_HEADERS = {"Content-Type": feishu.CONTENT_TYPE}


class FeishuAuthClient:
    """A :class:`~actors._source.TokenSource` over one pooled ``requests.Session``."""

    def __init__(self, session: requests.Session, *, timeout: tuple[float, float]) -> None:
        self._session = session
        self._timeout = timeout

    def fetch(self, request: TokenRequest) -> Grant:
        """One attempt at the token ``request`` names (marketplace: ticket or app token)."""
        app = request.app
        endpoint = feishu.endpoint_for(app.app_type, request.kind)
        # Feishu must never see an empty ticket (FEISHU.md).
        if "app_ticket" in endpoint.request_fields and not request.app_ticket:
            raise AppTicketError(app.app_id, "no app_ticket received yet")
        values = {
            "app_id": app.app_id,
            "app_secret": app.app_secret,
            "app_ticket": request.app_ticket or "",
            "app_access_token": request.app_token or "",
            "tenant_key": request.tenant_key or "",
        }
        body = {name: values[name] for name in endpoint.request_fields}
        data = self._post(app, endpoint.path, body)
        return _grant(data, endpoint.token_field or "")

    def resend_ticket(self, app: AppConfig) -> None:
        """Ask Feishu to push the app_ticket event again; the ticket never comes back here."""
        body = {"app_id": app.app_id, "app_secret": app.app_secret}
        self._post(app, feishu.RESEND.path, {k: body[k] for k in feishu.RESEND.request_fields})

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
    """The one response handler: success body, or the typed error its code stands for."""
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get(feishu.CODE_FIELD), int):
        kind = response.headers.get("Content-Type", "unknown content").split(";")[0]
        raise UpstreamError(None, status, 1, detail=f"non-JSON or malformed body ({kind})")
    code: int = data[feishu.CODE_FIELD]
    msg = str(data.get(feishu.MSG_FIELD, ""))[:200]
    rule = feishu.rule_for(code, status)
    if rule is feishu.Rule.OK:
        return data
    if rule is feishu.Rule.PERMANENT:
        raise AuthError(code, msg)
    if rule is feishu.Rule.TICKET_INVALID:
        raise AppTicketError(app.app_id, f"Feishu rejected the app_ticket (code {code})")
    if rule is feishu.Rule.RATE_LIMITED:
        reset = _reset_seconds(response.headers.get(feishu.RATE_LIMIT_RESET_HEADER))
        raise RateLimitedError(code, status, 1, retry_after=reset)
    # Everything else (token-invalid codes, unknown codes) is one transient failed attempt; the
    # outcome decision reads the code to see whether it also means "drop the app token".
    raise UpstreamError(code, status, 1, detail=msg)


def _grant(data: dict[str, Any], field: str) -> Grant:
    token = data.get(field)
    expire = data.get(feishu.EXPIRE_FIELD)
    if not isinstance(token, str) or not token or not feishu.usable_expire(expire):
        raise UpstreamError(0, None, 1, detail=f"success body without a usable {field}/expire")
    return Grant(token, float(expire))  # type: ignore[arg-type]  # usable_expire checked it


def _reset_seconds(header: str | None) -> float | None:
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    # NaN, infinity and negative values are no advice; huge ones are capped.
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, feishu.MAX_RETRY_AFTER)
