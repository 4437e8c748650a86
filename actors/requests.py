"""HTTP client integration for ``requests``: :class:`FeishuAuth`, a bearer-token ``AuthBase``
that recovers once from an invalid-token answer.

Feishu reports an invalid token (99991663 / 99991664 / 99991671) in the JSON body, with HTTP 200
or 400 alike, so a 401-based retry never fires. :class:`FeishuAuth` reads the body's ``code``,
invalidates exactly the token it sent (compare-and-invalidate: a token another request already
replaced is left alone), and sends the request once more with a fresh token, never more. Other
codes (99991672 missing scope, ...) and non-JSON answers (a gateway's HTML 502) come back
untouched.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Generator
from typing import Any

import requests
from requests.auth import AuthBase

from actors._auth import AUTHORIZATION, TokenAuth, bearer, is_json, response_code

__all__ = ["FeishuAuth"]

# An answer with the keyword arguments it was sent with (``stream``, ``timeout``, ...).
_Answer = tuple[requests.Response, dict[str, Any]]


class FeishuAuth(TokenAuth, AuthBase):
    """``requests`` auth that sends ``Authorization: Bearer <token>`` from a TokenSystem.

    ``timeout`` bounds each wait for the system (a get, an invalidation) in seconds.

    Example::

        session.auth = actors.FeishuAuth(system)                 # the only app's tenant token
        session.get(url, auth=actors.FeishuAuth(system, tenant_key=tk, app_id="cli_x"))
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        # requests sends the prepared request itself and hands its answer to a response hook:
        # the flow is started here (the first get) and resumed there.
        flow = self._target.flow(send=_token, read_code=_read_code)
        request.headers[AUTHORIZATION] = bearer(next(flow))
        request.register_hook("response", functools.partial(_resend_once, flow))  # type: ignore[no-untyped-call]
        return request


def _token(token: str) -> str:
    return token


def _resend_once(
    flow: Generator[str, _Answer, None], response: requests.Response, **send_kwargs: Any
) -> requests.Response:
    if response.is_redirect:
        return response  # requests follows it: the answer to judge is the last of the chain
    try:
        token = flow.send((response, send_kwargs))
    except StopIteration:  # the answer is final; a redirect after the resend is followed as is
        return response
    response.close()  # the answer was read: its connection goes back to the pool
    again = response.request.copy()
    again.headers[AUTHORIZATION] = bearer(token)
    resent: requests.Response = response.connection.send(again, **send_kwargs)
    resent.history.append(response)
    resent.request = again
    with contextlib.suppress(StopIteration):
        flow.send((resent, send_kwargs))  # the resend's answer is final: the flow ends
    return resent


def _read_code(answer: _Answer) -> object:
    response, send_kwargs = answer
    if send_kwargs.get("stream") and not is_json(response.headers.get("Content-Type")):
        return None  # never read a streamed download just to look for a code
    try:
        return response_code(response.json())
    except ValueError:  # HTML from a gateway, an empty body: not ours to judge
        return None
