"""The invalid-token policy the HTTP integrations share (``requests``, ``httpx``, ``lark-oapi``).

Feishu reports an invalid access token (99991663 / 99991664 / 99991671) in the JSON body of the
answer, with HTTP 200 or 400 alike, so a 401-based retry never fires. The policy, written once in
:func:`exchange`: get the token, send, read the answer only as far as needed to see its ``code``;
on an invalid-token code, invalidate exactly the token that was sent (compare-and-invalidate: a
token another request already replaced is left alone) and send once more with a fresh token,
never more. Other codes (99991672 missing scope, ...) and answers without one (a gateway's HTML
502, a download) come back untouched.

:func:`exchange` does no I/O: it yields the steps it needs done, the way ``httpx.Auth.auth_flow``
is one flow for sync and async clients. :class:`TokenTarget` drives it with the token's I/O done
blocking (:meth:`TokenTarget.flow`) or awaited (:meth:`TokenTarget.aflow`); an integration only
says how it sends a request with a token and how it reads an answer's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from actors._config import TokenKind
from actors.feishu import _protocol as feishu

if TYPE_CHECKING:
    from actors._proxy import TokenProxy
    from actors._system import TokenSystem

__all__ = [
    "AUTHORIZATION",
    "TOKEN_INVALID_CODES",
    "TOKEN_TIMEOUT",
    "Fetch",
    "Invalidate",
    "ReadCode",
    "Send",
    "TokenAuth",
    "TokenTarget",
    "arun",
    "bearer",
    "bearer_of",
    "exchange",
    "is_json",
    "is_token_invalid",
    "response_code",
    "run",
]

A = TypeVar("A")  # an answer, as the integration's client returns it
X = TypeVar("X")  # what an integration's send gives for a token (a request to yield, an answer)

TOKEN_INVALID_CODES: frozenset[int] = feishu.TOKEN_INVALID_CODES

# How long an integration waits for the system to give or invalidate a token, unless told: time
# for a cold get's upstream request on a working network, short of hanging a caller for good.
TOKEN_TIMEOUT = 10.0

AUTHORIZATION = "Authorization"
_BEARER = "Bearer "


def is_token_invalid(code: object) -> bool:
    """Whether a Feishu ``code`` means "this access token is invalid: refetch and retry once"."""
    return isinstance(code, int) and not isinstance(code, bool) and code in TOKEN_INVALID_CODES


def response_code(body: object) -> object:
    """The ``code`` of a parsed Feishu JSON answer, or None."""
    return body.get(feishu.CODE_FIELD) if isinstance(body, dict) else None


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` says JSON: only a JSON answer can carry a Feishu code."""
    return "json" in (content_type or "").lower()


def bearer(token: str) -> str:
    """The ``Authorization`` header value that sends ``token``."""
    return _BEARER + token


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header and header.startswith(_BEARER):
        return header[len(_BEARER) :] or None
    return None


# --- the policy ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """Get the target's token from the system; the token comes back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send the request with ``token``; the answer comes back."""

    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReadCode:
    """Read ``answer`` only as far as needed to see its Feishu ``code``; the code (or None)
    comes back."""

    answer: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidate:
    """Invalidate ``token`` in the system if it is still the cached one; nothing comes back."""

    token: str


Step = Fetch | Send | ReadCode | Invalidate
_FETCH = Fetch()


def exchange() -> Generator[Step, Any, None]:
    """One request under the policy, as the steps it needs done; the last answer is final."""
    token = yield _FETCH
    answer = yield Send(token)
    if is_token_invalid((yield ReadCode(answer))):
        yield Invalidate(token)
        yield Send((yield _FETCH))


# --- its two drivers -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TokenTarget:
    """Which token an integration sends (``kind``, tenant and app, from the system's ``proxy``)
    and how long each wait for the system may take: a get or an invalidation raises
    ``pykka.Timeout`` (blocking) or ``TimeoutError`` (awaited) after ``timeout`` seconds."""

    proxy: TokenProxy
    kind: TokenKind = TokenKind.TENANT
    tenant_key: str | None = None
    app_id: str | None = None
    timeout: float = TOKEN_TIMEOUT

    def get(self) -> str:
        future = self.proxy.get_token(self.kind, tenant_key=self.tenant_key, app_id=self.app_id)
        return future.get(timeout=self.timeout)

    async def aget(self) -> str:
        async with asyncio.timeout(self.timeout):
            return await self.proxy.aget_token(
                self.kind, tenant_key=self.tenant_key, app_id=self.app_id
            )

    def invalidate(self, token: str) -> None:
        self.proxy.invalidate(token).get(timeout=self.timeout)

    async def ainvalidate(self, token: str) -> None:
        async with asyncio.timeout(self.timeout):
            await self.proxy.ainvalidate(token)

    def flow(
        self, *, send: Callable[[str], X], read_code: Callable[[A], object]
    ) -> Generator[X, A, None]:
        """:func:`exchange` with the token got and invalidated blocking: yields
        ``send(token)`` for each send and takes that send's answer back."""
        steps = exchange()
        reply: object = None  # a generator starts on None
        while (step := _next(steps, reply)) is not None:
            if isinstance(step, Send):
                reply = yield send(step.token)
            else:
                reply = self._do(step, read_code)

    async def aflow(
        self, *, send: Callable[[str], X], read_code: Callable[[A], Awaitable[object]]
    ) -> AsyncGenerator[X, A]:
        """:meth:`flow` for coroutines: the token and the code are awaited."""
        steps = exchange()
        reply: object = None  # a generator starts on None
        while (step := _next(steps, reply)) is not None:
            if isinstance(step, Send):
                reply = yield send(step.token)
            else:
                reply = await self._ado(step, read_code)

    def _do(self, step: Step, read_code: Callable[[Any], object]) -> object:
        if isinstance(step, ReadCode):
            return read_code(step.answer)
        if isinstance(step, Invalidate):
            self.invalidate(step.token)
            return None
        return self.get()

    async def _ado(self, step: Step, read_code: Callable[[Any], Awaitable[object]]) -> object:
        if isinstance(step, ReadCode):
            return await read_code(step.answer)
        if isinstance(step, Invalidate):
            await self.ainvalidate(step.token)
            return None
        return await self.aget()


def _next(steps: Generator[Step, Any, None], reply: object) -> Step | None:
    try:
        return steps.send(reply)
    except StopIteration:
        return None


def run(flow: Generator[A, A, None]) -> A:
    """The final answer of a :meth:`TokenTarget.flow` whose ``send`` makes the whole exchange
    and returns the answer."""
    answer = next(flow)
    try:
        while True:
            answer = flow.send(answer)
    except StopIteration:
        return answer


async def arun(flow: AsyncGenerator[Awaitable[A], A]) -> A:
    """:func:`run` for a :meth:`TokenTarget.aflow` whose ``send`` returns an awaitable answer."""
    answer = await (await anext(flow))
    try:
        while True:
            answer = await (await flow.asend(answer))
    except StopAsyncIteration:
        return answer


class TokenAuth:
    """The constructor the HTTP client auths share: which token they send for ``system``."""

    def __init__(
        self,
        system: TokenSystem,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        timeout: float = TOKEN_TIMEOUT,
    ) -> None:
        self._target = TokenTarget(system.proxy, kind, tenant_key, app_id, timeout)
