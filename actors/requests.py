"""HTTP client integration for ``requests``: :class:`FeishuAuth`, a bearer-token ``AuthBase``
that recovers once from an invalid-token answer.

Feishu reports an invalid token (99991663 / 99991664 / 99991671; for a user token 99991668 /
99991677 too) in the JSON body, with HTTP 200 or 400 alike, so a 401-based retry never fires.
:class:`FeishuAuth` reads the body's ``code``, invalidates exactly the token it sent
(compare-and-invalidate: a token another request already replaced is left alone; a user's grant
is rotated once), and sends the request once more with a fresh token, never more. Other codes
(99991672 missing scope, ...) and non-JSON answers (a gateway's HTML 502) come back untouched.
The token goes to the app's own host only; a body that cannot be sent again is not resent; a
streamed answer is read only as far as needed to see a code (``actors._auth``).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Generator
from typing import Any

import requests
from requests.auth import AuthBase
from urllib3 import HTTPResponse
from urllib3.exceptions import HTTPError

from actors._auth import (
    AUTHORIZATION,
    CODE_PREFIX,
    TokenAuth,
    bearer,
    body_start,
    code_of,
    may_carry_code,
    rewind,
)

__all__ = ["FeishuAuth"]

# An answer with the keyword arguments it was sent with (``stream``, ``timeout``, ...).
_Answer = tuple[requests.Response, dict[str, Any]]


class FeishuAuth(TokenAuth, AuthBase):
    """``requests`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    The token goes only to the app's own origin (the scheme, host and port of its
    ``base_url``) and to the ``hosts`` listed: ``hosts=("open.larksuite.com",
    "https://gateway.example:8443")`` (a bare host means ``https://`` on port 443). A request
    to any other host goes out without our ``Authorization`` (an ``Authorization`` the caller
    set is theirs and stays), no token is fetched for it, and its answer never invalidates
    one: nor does an answer at the end of a redirect chain that left those hosts (``requests``
    drops the header when a redirect leaves the host).

    On an invalid-token answer the request is sent once more only if its body can be sent again
    byte for byte: bytes, str, a form, ``json=``, or a seekable file (rewound to where its first
    send began). A generator, a pipe or another one-way body is not resent: the invalid-token
    answer is returned as it came, with its token invalidated so that the caller's own retry
    gets a fresh one. A streamed answer (``stream=True``) is read only as far as its first
    64 KiB to see a code (a JSON one without a ``Content-Length`` is handed over once 64 KiB or
    its end arrived), and still reads whole, ``raw`` included.

    ``app_id`` names the app (required when the system serves several: its ``base_url`` is
    where the token may go); an unknown one is refused with ``ValueError`` here, as is a
    ``hosts`` entry that is not a host or an origin, or is ``http://`` beyond loopback.
    ``timeout`` bounds each wait for the system (a get, an invalidation) in seconds.

    ``FeishuAuth(system, TokenKind.USER, user=open_id)`` sends that user's access token (a
    user the system holds no grant for: ``ReauthorizationRequired`` before anything is sent).
    Its answer 99991668 / 99991677 (user access token invalid / expired) invalidates exactly
    the token sent, which rotates the grant once, and the request goes once more with the new
    token; the codes above keep their meaning for it. ``user=`` is required for
    ``TokenKind.USER`` and refused for the other kinds, with ``ValueError`` here.

    Example::

        session.auth = actors.FeishuAuth(system)                 # the only app's tenant token
        session.get(url, auth=actors.FeishuAuth(system, tenant_key=tk, app_id="cli_x"))
        session.get(url, auth=actors.FeishuAuth(system, actors.TokenKind.USER, user=open_id))
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        # requests sends the prepared request itself and hands its answer to a response hook:
        # the flow is started here (the first get) and resumed there.
        flow = self._target.flow(
            url=request.url or "",
            send=_token,
            answered_from=_answered_from,
            read_code=_read_code,
            rewind=functools.partial(rewind, request.body, body_start(request.body)),
        )
        token = next(flow)
        if token is not None:
            request.headers[AUTHORIZATION] = bearer(token)
        request.register_hook("response", functools.partial(_resend_once, flow))  # type: ignore[no-untyped-call]
        return request


def _token(token: str | None) -> str | None:
    return token


def _resend_once(
    flow: Generator[str | None, _Answer, None], response: requests.Response, **send_kwargs: Any
) -> requests.Response:
    if response.is_redirect:
        return response  # requests follows it: the answer to judge is the last of the chain
    try:
        token = flow.send((response, send_kwargs))
    except StopIteration:  # the answer is final; a redirect after the resend is followed as is
        return response
    response.close()  # the answer was read: its connection goes back to the pool
    again = response.request.copy()
    if token is not None:  # the policy resends to the host it judged the answer of: always ours
        again.headers[AUTHORIZATION] = bearer(token)
    resent: requests.Response = response.connection.send(again, **send_kwargs)
    resent.history.append(response)
    resent.request = again
    with contextlib.suppress(StopIteration):
        flow.send((resent, send_kwargs))  # the resend's answer is final: the flow ends
    return resent


def _answered_from(answer: _Answer) -> str:
    return answer[0].url


def _read_code(answer: _Answer) -> object:
    response, send_kwargs = answer
    headers = response.headers
    if not may_carry_code(headers.get("Content-Type"), headers.get("Content-Length")):
        return None  # only a short JSON answer can carry a code; a download is never read here
    if send_kwargs.get("stream"):
        return _peek_code(response)
    return code_of(response.content)  # requests reads it whole next, for the caller


def _peek_code(response: requests.Response) -> object:
    """The code of a streamed answer, seen in its first :data:`CODE_PREFIX` bytes, which are put
    back in front of the rest: the caller reads the answer from its first byte."""
    raw = response.raw
    if not isinstance(raw, HTTPResponse):
        return None  # a stand-in transport's stream: left alone
    # Read as sent (still compressed): a new response around the bytes decodes them as the
    # first would have, for requests' readers and for a caller reading ``raw`` alike.
    prefix = raw.read(CODE_PREFIX + 1, decode_content=False)
    response.raw = HTTPResponse(
        body=_Replay(prefix, raw),
        headers=raw.headers,
        status=raw.status,
        version=raw.version,
        reason=raw.reason,
        preload_content=False,
        decode_content=raw.decode_content,
        # requests reads the session's cookies from the underlying answer after the hooks.
        original_response=getattr(raw, "_original_response", None),
        request_method=response.request.method,
        request_url=raw.url,
    )
    if len(prefix) > CODE_PREFIX:
        return None  # longer than any invalid-token answer: left whole for the caller
    whole = HTTPResponse(
        body=io.BytesIO(prefix), headers=raw.headers, preload_content=False, decode_content=True
    )
    try:
        return code_of(whole.read(CODE_PREFIX + 1))
    except HTTPError:  # a body its Content-Encoding does not decode: not ours to judge
        return None


class _Replay(io.RawIOBase):
    """A streamed answer's bytes: those already read to see its code, then the rest."""

    def __init__(self, prefix: bytes, rest: HTTPResponse) -> None:
        super().__init__()
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # all of it, as a read of the first answer would give
            head, self._prefix = self._prefix, b""
            return head + self._rest.read(decode_content=False)
        return self._take(size) or self._rest.read(size, decode_content=False)

    def read1(self, size: int = -1) -> bytes:
        read1 = getattr(self._rest, "read1", None)
        if self._prefix or read1 is None:
            return self.read(size if size >= 0 else CODE_PREFIX)
        return read1(None if size < 0 else size, decode_content=False)  # type: ignore[no-any-return]

    def _take(self, size: int) -> bytes:
        head, self._prefix = self._prefix[:size], self._prefix[size:]
        return head

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        # As requests closes an answer: the connection is closed, then handed back to its pool
        # (a drained one was handed back already and is not touched again).
        if not self.closed:
            self._rest.close()
            self._rest.release_conn()
        super().close()
