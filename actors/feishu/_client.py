"""The Feishu auth client: the default token source, speaking the auth v3 endpoints over HTTP.

Every call has a ``(connect, read)`` timeout, the JSON body is parsed whatever the HTTP status
(Feishu reports errors with 200, 400 or 429 alike), and every outcome is classified, through the
protocol table of ``actors.feishu._protocol``, into a :class:`Grant` or one of the typed errors of
``actors._errors``. One call is one attempt: retries are the TokenActor's business, so the errors
raised here carry ``attempts=1``. A keyless app's tenant token (``AppConfig(app_id,
client_assertion=provider)``) is the jwt-bearer grant of the v3 OAuth token endpoint instead,
made by ``actors.feishu._oauth`` over this module's transport.

Hardening against an upstream (or a gateway in front of it) that misbehaves:

- *Deadline.* Socket timeouts bound each read, not the answer: a server sending one byte every
  0.3 s never trips a 10 s read timeout. So every attempt also has an overall deadline of
  ``connect + read`` timeout, after which it is an :class:`UpstreamError` and the worker is free.
  The body is read in small pieces with the deadline checked between them, and capped at
  ``_MAX_BODY`` (a token answer is about 200 bytes). On the session a TokenSystem creates itself
  (an :class:`~actors.feishu._sockets.AbortableAdapter`), a watchdog also shuts the attempt's socket
  down when the deadline passes, which bounds a dripped status line and headers as well.
  **Limit:** with a session passed in by the application, the connect and the status line and
  headers are bounded only by urllib3's per-operation timeouts (a server dripping its headers can
  hold that worker); the body still ends at the deadline, give or take one read timeout.
- *HTTP 429* is rate limiting whatever the body (a gateway's HTML page too): its
  ``x-ogw-ratelimit-reset`` header is honoured, capped at ``MAX_RETRY_AFTER``.
- *Upstream text* (``msg``, the content type) goes into errors, and so into logs, only through
  :func:`actors._errors.redact`: a proxy echoing the request must not leak the app_secret, the
  app_ticket, the app token or any token-shaped string.
- *Frames.* The body (app_secret, app_ticket, app token) lives in a :class:`_Form` whose
  ``repr`` masks it, and ``fetch``/``resend_ticket`` raise their error from their own frame,
  without the traceback and chained exceptions (urllib3's frames hold the body as bytes) of
  where it arose: loguru's ``logger.exception`` and Sentry print every frame's variables.
- *Lifetimes* that are not finite numbers in ``(0, MAX_EXPIRE]`` (``1e10``, ``NaN``, ``1e400``
  which JSON reads as infinity, zero, negative) are a failed attempt, never a token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import requests
import urllib3

from actors._config import AppConfig, TokenKind
from actors._errors import (
    AppTicketError,
    AuthError,
    RateLimitedError,
    TokenError,
    UpstreamError,
    detached,
    redact,
)
from actors._source import Grant, TokenRequest
from actors.feishu import _protocol as feishu
from actors.feishu._sockets import Deadline, attempt_deadline

__all__ = ["FeishuAuthClient"]


_HEADERS = {"Content-Type": feishu.CONTENT_TYPE}
# Request fields whose values must never come back out in an error or a log line.
_SECRET_FIELDS = ("app_secret", "app_ticket", "app_access_token")
_MAX_BODY = 64 * 1024  # a token answer is ~200 bytes; anything this large is not one
_READ_SIZE = 4096
_MAX_MSG = 200
A = TypeVar("A")
R = TypeVar("R")


class FeishuAuthClient:
    """A :class:`~actors._source.TokenSource` over one pooled ``requests.Session`` (the
    user-token endpoints are :class:`~actors.feishu._oauth.FeishuOAuth`'s, on the same one)."""

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: tuple[float, float],
        keyless: Callable[[AppConfig], Grant] | None = None,
    ) -> None:
        """``keyless``: one attempt at a keyless app's tenant token (the OAuth client's
        ``tenant_grant``, which is built on this module's transport)."""
        self._session = session
        self._timeout = timeout
        self._keyless_grant = keyless

    def fetch(self, request: TokenRequest) -> Grant:
        """One attempt at the token ``request`` names (marketplace: ticket or app token)."""
        outcome = _attempt(self._fetch, request)
        if isinstance(outcome, TokenError):
            raise outcome  # from this frame: its locals hold no credential
        return outcome

    def resend_ticket(self, app: AppConfig) -> None:  # the ticket comes back as an event
        """Ask Feishu to push the app_ticket event again; the ticket never comes back here."""
        outcome = _attempt(self._resend, app)
        if isinstance(outcome, TokenError):
            raise outcome

    def _fetch(self, request: TokenRequest) -> Grant:
        if request.kind is TokenKind.JSAPI_TICKET:
            return self._jsapi_ticket(request)
        if request.app.keyless:  # no secret: the v3 OAuth endpoint, with a client assertion
            return self._keyless(request)
        endpoint = feishu.endpoint_for(request.app.app_type, request.kind)
        # Feishu must never see an empty ticket (docs/feishu-protocol.md).
        if "app_ticket" in endpoint.request_fields and not request.app_ticket:
            raise AppTicketError(request.app.app_id, "no app_ticket received yet")
        data = self._post(request.app, endpoint.path, _Form.of(endpoint, request.app, request))
        return _grant(data, endpoint.token_field or "")

    def _jsapi_ticket(self, request: TokenRequest) -> Grant:
        app, token = request.app, request.tenant_token or ""
        headers = {**_HEADERS, "Authorization": f"Bearer {token}"}
        url = app.base_url + feishu.JSAPI_TICKET_PATH
        answer = _send(self._session.post, url, self._timeout, headers, body=b"{}")
        data = _classify(app, *answer, [token]).get("data")
        fields = data if isinstance(data, dict) else {}
        return _grant(fields, feishu.JSAPI_TICKET_FIELD, expire=feishu.JSAPI_EXPIRE_FIELD)

    def _resend(self, app: AppConfig) -> None:
        self._post(app, feishu.RESEND.path, _Form.of(feishu.RESEND, app))

    def _keyless(self, request: TokenRequest) -> Grant:
        if request.kind is not TokenKind.TENANT:
            # As in the SDKs: a keyless app has no app_access_token (nothing is sent).
            detail = "a keyless app has no app_access_token; ask for TokenKind.TENANT"
            raise AuthError(feishu.ASSERTION_NO_APP_TOKEN, detail)
        if self._keyless_grant is None:
            detail = "this client has no OAuth client for keyless apps (give it keyless=)"
            raise AuthError(feishu.ASSERTION_NO_APP_TOKEN, detail)
        return self._keyless_grant(request.app)

    def _post(self, app: AppConfig, path: str, form: _Form) -> dict[str, Any]:
        answer = _send(
            self._session.post, app.base_url + path, self._timeout, _HEADERS, body=form.body
        )
        return _classify(app, *answer, form.secrets)


def _attempt(call: Callable[[A], R], arg: A) -> R | TokenError:
    """``call(arg)``, or the TokenError it raised without the frames that raised it: those
    held the request body, and an error's traceback is printed with its frames' variables
    (loguru's defaults, Sentry)."""
    try:
        return call(arg)
    except TokenError as exc:
        return detached(exc)


def _send(
    send: Callable[..., requests.Response],
    url: str,
    timeout: tuple[float, float],
    headers: Mapping[str, str],
    *,
    body: bytes | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """One request with ``send`` (a session's ``post`` or ``get``) under the attempt's overall
    deadline: its status, headers and whole body, or the UpstreamError it ended in."""
    with attempt_deadline(sum(timeout)) as deadline:
        try:
            # Never followed: requests would re-send the body (the app secret in it) and the
            # headers to wherever the Location header points.
            response = send(
                url,
                data=body,
                headers=headers,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _failed(exc, deadline, None) from None
        try:
            content = _read_body(response, deadline)
        finally:
            response.close()
    return response.status_code, response.headers, content


class _Form:
    """One auth request's JSON body, and the credentials in it to redact from the answer.

    Its ``repr`` names the fields only: a frame holding it shows no credential.
    """

    __slots__ = ("body", "fields", "secrets")

    def __init__(
        self, values: Mapping[str, str], *, secret_fields: Sequence[str] = _SECRET_FIELDS
    ) -> None:
        self.fields = tuple(values)
        self.body = json.dumps(dict(values)).encode()
        self.secrets = [values.get(name) for name in secret_fields]

    @classmethod
    def of(
        cls, endpoint: feishu.Endpoint, app: AppConfig, request: TokenRequest | None = None
    ) -> _Form:
        """The body ``endpoint`` takes, filled from ``app`` and ``request``."""
        values = {"app_id": app.app_id, "app_secret": app.app_secret or ""}  # never keyless
        if request is not None:
            values["app_ticket"] = request.app_ticket or ""
            values["app_access_token"] = request.app_token or ""
            values["tenant_key"] = request.tenant_key or ""
        return cls({name: values[name] for name in endpoint.request_fields})

    def __repr__(self) -> str:
        return f"<auth request body: {', '.join(self.fields)}; values masked>"


def _read_body(response: requests.Response, deadline: Deadline) -> bytes:
    """The whole body, read a piece at a time (``read1`` returns as soon as any bytes arrive)
    with the deadline checked between pieces; too large or too late is an UpstreamError."""
    status = response.status_code
    raw = response.raw
    pieces: list[bytes] = []
    size = 0
    while True:
        if deadline.passed:
            raise _past_deadline(deadline, status)
        try:
            if not hasattr(raw, "read1"):  # an adapter answering without a stream (a test double)
                return _within_cap(response.content, len(response.content), status)
            piece = raw.read1(_READ_SIZE, decode_content=True)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise _failed(exc, deadline, status) from None
        if not piece:
            return b"".join(pieces)
        size += len(piece)
        pieces.append(_within_cap(piece, size, status))


def _within_cap(piece: bytes, size: int, status: int) -> bytes:
    """``piece``, unless the body has grown to ``size`` bytes, more than any token answer."""
    if size > _MAX_BODY:
        detail = f"answer larger than {_MAX_BODY // 1024} KiB: not a token answer"
        raise UpstreamError(None, status, 1, detail=detail)
    return piece


def _failed(exc: Exception, deadline: Deadline, status: int | None) -> UpstreamError:
    """A transport error of one attempt: the deadline, a timeout, or the error's type name."""
    if deadline.passed:
        return _past_deadline(deadline, status)
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts):
        return UpstreamError(None, status, 1, detail=f"timed out ({type(exc).__name__})")
    return UpstreamError(None, status, 1, detail=type(exc).__name__)


def _past_deadline(deadline: Deadline, status: int | None) -> UpstreamError:
    detail = f"no complete answer before the {deadline.seconds:g}s deadline (connect + read)"
    return UpstreamError(None, status, 1, detail=detail)


def _classify(
    app: AppConfig,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    secrets: Sequence[str | None],
) -> dict[str, Any]:
    """The one response handler: success body, or the typed error its code stands for."""
    data = _answer(status, headers, content, secrets)
    code: int = data[feishu.CODE_FIELD]
    msg = _upstream_text(data.get(feishu.MSG_FIELD, ""), secrets)
    rule = feishu.rule_for(code, status)
    if rule is feishu.Rule.OK:
        return data
    if rule is feishu.Rule.PERMANENT:
        raise AuthError(code, msg)
    if rule is feishu.Rule.TICKET_INVALID:
        raise AppTicketError(app.app_id, f"Feishu rejected the app_ticket (code {code})")
    if rule is feishu.Rule.RATE_LIMITED:
        raise _rate_limited(code, status, headers)
    # Everything else (token-invalid codes, unknown codes) is one transient failed attempt; the
    # outcome decision reads the code to see whether it also means "drop the app token".
    raise UpstreamError(code, status, 1, detail=msg)


def _answer(
    status: int, headers: Mapping[str, str], content: bytes, secrets: Sequence[str | None]
) -> dict[str, Any]:
    """The JSON object of an answer, with an integer ``code``; a redirect, a body that is not
    such an object (a gateway's page) and an HTTP 429 page are failed attempts."""
    if 300 <= status < 400:
        raise UpstreamError(None, status, 1, detail="redirect refused (credentials stay put)")
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # not JSON (or nested beyond reason)
        data = None
    if not isinstance(data, dict) or not isinstance(data.get(feishu.CODE_FIELD), int):
        if status == 429:  # a gateway's page, not Feishu's JSON: rate limiting all the same
            raise _rate_limited(None, status, headers)
        kind = redact(headers.get("Content-Type", "unknown content").split(";")[0], secrets)
        raise UpstreamError(None, status, 1, detail=f"non-JSON or malformed body ({kind[:60]})")
    return data


def _upstream_text(value: object, secrets: Sequence[str | None]) -> str:
    """Text from an answer as an error may carry it: redacted, then cut short (redacted first:
    a cut must not leave half a secret behind)."""
    return redact(str(value), secrets)[:_MAX_MSG]


def _rate_limited(code: int | None, status: int, headers: Mapping[str, str]) -> RateLimitedError:
    reset = _reset_seconds(headers.get(feishu.RATE_LIMIT_RESET_HEADER))
    return RateLimitedError(code, status, 1, retry_after=reset)


def _grant(data: dict[str, Any], field: str, *, expire: str = feishu.EXPIRE_FIELD) -> Grant:
    token, lifetime = data.get(field), data.get(expire)
    # Only the shape: whether the lifetime is one to cache is decided once, in the core, for
    # whichever source answered (actors._refresh).
    if not isinstance(token, str) or not token or not _is_number(lifetime):
        raise UpstreamError(0, None, 1, detail=f"success body without a usable {field}/{expire}")
    return Grant(token, float(lifetime))  # type: ignore[arg-type]  # _is_number checked it


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reset_seconds(header: str | None) -> float | None:
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    # NaN, infinity and negative values are no advice; huge ones are capped.
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, feishu.MAX_RETRY_AFTER)
