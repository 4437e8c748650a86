"""The invalid-token policy the HTTP integrations share (``requests``, ``httpx``, ``lark-oapi``).

Feishu reports an invalid access token (99991663 / 99991664 / 99991671) in the JSON body of the
answer, with HTTP 200 or 400 alike, so a 401-based retry never fires; a user access token is
refused with codes of its own as well (99991668 invalid, 99991677 expired: :func:`invalid_codes`).
The policy, written once in :func:`exchange`: get the token, send, read the answer only as far as
needed to see its ``code``; on an invalid-token code of the kind sent, invalidate exactly the
token that was sent (compare-and-invalidate: a token another request already replaced is left
alone; for a user token the next get rotates the grant, once) and send once more with a fresh
token, never more. Other codes (99991672 missing scope, ...) and answers without one (a
gateway's HTML 502, a download) come back untouched.

Three checks bound what the policy trusts: the first two are steps of :func:`exchange`, the
third is in :func:`may_carry_code` and :func:`code_of`, which every front reads answers with.

- **Hosts.** The token goes only to the app's own origin (scheme, host and port of its
  ``base_url``) and the origins the caller lists (:class:`Hosts`). A request to any other host
  is sent without a token (nothing is fetched for it) and its answer is never judged; an answer
  from another host (the end of a redirect chain) invalidates nothing and is returned as is.
- **Bodies.** A resend sends the bytes of the first send or is not made: a body in memory is
  sent again, a seekable file is rewound to where its first send began, and any other body (a
  generator, a pipe, a stream already consumed) is not resent: the first answer is returned,
  its token invalidated all the same, so the caller's own retry gets a fresh one.
- **Answers.** Only a JSON answer of at most :data:`CODE_PREFIX` bytes is judged: an invalid-token
  answer is a few hundred bytes. A streamed answer is read that far and no further, and the
  caller still reads it whole.

:func:`exchange` does no I/O: it yields the steps it needs done, the way ``httpx.Auth.auth_flow``
is one flow for sync and async clients. :class:`TokenTarget` drives it with the token's I/O done
blocking (:meth:`TokenTarget.flow`) or awaited (:meth:`TokenTarget.aflow`); an integration only
says where a request goes, how it sends it with a token (or without), where an answer came from,
how it reads an answer's code, and how it readies the body to be sent again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from actors._config import AppConfig, TokenKind, _loopback, resolve_app, resolve_key
from actors.feishu import _protocol as feishu

if TYPE_CHECKING:
    from actors._proxy import TokenProxy
    from actors._system import TokenSystem

__all__ = [
    "AUTHORIZATION",
    "CODE_PREFIX",
    "TOKEN_INVALID_CODES",
    "TOKEN_TIMEOUT",
    "USER_TOKEN_INVALID_CODES",
    "AnsweredFrom",
    "Fetch",
    "Hosts",
    "Invalidate",
    "ReadCode",
    "Rewind",
    "Send",
    "TokenAuth",
    "TokenTarget",
    "app_of",
    "arun",
    "bearer",
    "bearer_of",
    "body_start",
    "code_of",
    "exchange",
    "invalid_codes",
    "is_json",
    "is_token_invalid",
    "may_carry_code",
    "origin",
    "response_code",
    "rewind",
    "run",
]

A = TypeVar("A")  # an answer, as the integration's client returns it
X = TypeVar("X")  # what an integration's send gives for a token (a request to yield, an answer)

TOKEN_INVALID_CODES: frozenset[int] = feishu.TOKEN_INVALID_CODES
# A user token is refused with the codes of the user-token table's business rows, and with the
# access-token codes above, which keep their meaning for it (99991671: not shaped like a token).
USER_TOKEN_INVALID_CODES: frozenset[int] = TOKEN_INVALID_CODES | frozenset(
    code
    for code, row in feishu.USER_TOKEN_CODES.items()
    if row.rule is feishu.UserRule.TOKEN_INVALID
)

# How long an integration waits for the system to give or invalidate a token, unless told: time
# for a cold get's upstream request on a working network, short of hanging a caller for good.
TOKEN_TIMEOUT = 10.0

AUTHORIZATION = "Authorization"
_BEARER = "Bearer "

# How much of an answer is read to see its code: Feishu's invalid-token answer is a few hundred
# bytes, and a larger answer (an export, a download) is never read further than this to tell.
CODE_PREFIX = 64 * 1024


def invalid_codes(kind: TokenKind) -> frozenset[int]:
    """The codes that say a token of ``kind`` sent to a business API is invalid."""
    return USER_TOKEN_INVALID_CODES if kind is TokenKind.USER else TOKEN_INVALID_CODES


def is_token_invalid(code: object, *, kind: TokenKind = TokenKind.TENANT) -> bool:
    """Whether a Feishu ``code`` means "this access token is invalid: refetch and retry once"
    for a token of ``kind`` (a user token's 99991668 / 99991677 too; a tenant or app token is
    never taken for invalid on a user token's code)."""
    return isinstance(code, int) and not isinstance(code, bool) and code in invalid_codes(kind)


def response_code(body: object) -> object:
    """The ``code`` of a parsed Feishu JSON answer, or None."""
    return body.get(feishu.CODE_FIELD) if isinstance(body, dict) else None


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` says JSON: only a JSON answer can carry a Feishu code."""
    return "json" in (content_type or "").lower()


def may_carry_code(content_type: str | None, content_length: str | None) -> bool:
    """Whether an answer with these headers is worth reading for a code: a JSON answer whose
    ``Content-Length``, if it has one, is at most :data:`CODE_PREFIX` bytes (a longer one is
    not even started on)."""
    if not is_json(content_type):
        return False
    try:
        return content_length is None or int(content_length) <= CODE_PREFIX
    except ValueError:
        return True  # malformed: the body itself tells, read no further than the prefix


def code_of(content: bytes) -> object:
    """The ``code`` of a JSON answer's whole body; None for one over :data:`CODE_PREFIX` bytes
    or one that is not a JSON object (HTML from a gateway, an empty body: not ours to judge)."""
    if len(content) > CODE_PREFIX:
        return None
    try:
        return response_code(json.loads(content))
    except (ValueError, RecursionError):
        return None


def bearer(token: str) -> str:
    """The ``Authorization`` header value that sends ``token``."""
    return _BEARER + token


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header and header.startswith(_BEARER):
        return header[len(_BEARER) :] or None
    return None


# --- where a token may go ------------------------------------------------------------------------

Origin = tuple[str, str, int]  # scheme, host, port: where a request connects
_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> Origin | None:
    """Where ``url`` connects: its scheme, host and port as ``requests`` (urllib3) reads it.

    None when it names no http(s) host, carries userinfo (``user@``), or the standard library
    reads it differently (``http://a\\@b``): a token never goes where two parsers disagree.
    """
    try:
        parsed, split = parse_url(url), urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError):
        return None
    scheme = (parsed.scheme or "").lower()
    host = (parsed.host or "").strip("[]").lower()
    if scheme not in _PORTS or not host or parsed.auth is not None or split.username is not None:
        return None
    if (split.scheme.lower(), split.hostname, split_port) != (scheme, host, parsed.port):
        return None
    return scheme, host, parsed.port or _PORTS[scheme]


@dataclasses.dataclass(frozen=True, slots=True)
class Hosts:
    """The origins a token may be sent to and whose answers may invalidate it."""

    origins: frozenset[Origin] = frozenset()

    @classmethod
    def of(cls, base_url: str, listed: Iterable[str] = ()) -> Hosts:
        """The app's own origin (its ``base_url``'s) and the ``listed`` ones.

        An entry is a host (``"open.larksuite.com"``, meaning ``https://`` on port 443) or an
        origin (``"https://host:8443"``; plain ``http://`` only on loopback, as for a
        ``base_url``); anything else is refused with ``ValueError``.
        """
        if isinstance(listed, str):
            msg = f"hosts must be a sequence of hosts, not the string {listed!r}"
            raise ValueError(msg)
        own = origin(base_url)
        return cls(frozenset({*([own] if own else []), *map(_listed_origin, listed)}))

    def allows(self, url: str) -> bool:
        """Whether a request to ``url`` may carry the token (and its answer say it is invalid)."""
        return origin(url) in self.origins


def _listed_origin(entry: object) -> Origin:
    url = entry if isinstance(entry, str) and "://" in entry else f"https://{entry}"
    found = origin(url) if isinstance(entry, str) else None
    rest = urlsplit(url) if found else None
    if found is None or rest is None or rest.path not in ("", "/") or rest.query or rest.fragment:
        msg = f"hosts: {entry!r} is not a host or an origin (https://host[:port])"
        raise ValueError(msg)
    if found[0] == "http" and not _loopback(found[1]):
        msg = f"hosts: {entry!r} would send the token in clear text; use https://"
        raise ValueError(msg)
    return found


# --- whether a body can be sent again ------------------------------------------------------------

_IN_MEMORY = (bytes, bytearray, memoryview, str)


def body_start(body: object) -> int | None:
    """Where a file-like ``body`` stands before its first send, to rewind it to; None when it is
    not a seekable file (in memory, an iterator, a pipe)."""
    if body is None or isinstance(body, _IN_MEMORY):
        return None
    seekable = getattr(body, "seekable", None)
    tell = getattr(body, "tell", None)
    try:
        if not callable(tell) or (callable(seekable) and not seekable()):
            return None
        start = tell()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return start if isinstance(start, int) and not isinstance(start, bool) else None


def rewind(body: object, start: int | None) -> bool:
    """Make ``body`` ready to be sent again byte for byte; False when it cannot be: only a body
    held in memory, or a file put back at its ``start`` (:func:`body_start`), can."""
    if body is None or isinstance(body, _IN_MEMORY):
        return True
    seek = getattr(body, "seek", None)
    if start is None or not callable(seek):
        return False
    try:
        seek(start)
    except (OSError, ValueError):
        return False
    return True


# --- the policy ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """Get the target's token from the system; the token comes back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send the request with ``token``, or with no token of ours for None (another host's
    request: an ``Authorization`` the caller set stays as it is); the answer comes back."""

    token: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class AnsweredFrom:
    """Tell where ``answer`` came from (the last URL of a redirect chain); the URL comes back."""

    answer: Any


@dataclasses.dataclass(frozen=True, slots=True)
class ReadCode:
    """Read ``answer`` only as far as needed to see its Feishu ``code``; the code (or None)
    comes back."""

    answer: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidate:
    """Invalidate ``token`` in the system if it is still the cached one; nothing comes back."""

    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class Rewind:
    """Make the request's body ready to be sent again byte for byte (:func:`rewind`); whether
    it could be comes back."""


Step = Fetch | Send | AnsweredFrom | ReadCode | Invalidate | Rewind
_FETCH = Fetch()
_REWIND = Rewind()


def exchange(
    hosts: Hosts, url: str, *, kind: TokenKind = TokenKind.TENANT
) -> Generator[Step, Any, None]:
    """One request to ``url`` with a token of ``kind`` under the policy, as the steps it needs
    done; the last answer is final."""
    if not hosts.allows(url):
        yield Send(None)  # not the app's host: no token, and its answer is not ours to judge
        return
    token = yield _FETCH
    answer = yield Send(token)
    if not hosts.allows((yield AnsweredFrom(answer))):
        return  # a redirect ended on another host: its word on our token is not taken
    if not is_token_invalid((yield ReadCode(answer)), kind=kind):
        return
    yield Invalidate(token)
    if (yield _REWIND):
        yield Send((yield _FETCH))


# --- its two drivers -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TokenTarget:
    """Which token an integration sends (``kind``, tenant, app and ``user``, from the system's
    ``proxy``), to which ``hosts`` (none unless told), and how long each wait for the system may
    take: a get or an invalidation raises ``pykka.Timeout`` (blocking) or ``TimeoutError``
    (awaited) after ``timeout`` seconds."""

    proxy: TokenProxy
    kind: TokenKind = TokenKind.TENANT
    tenant_key: str | None = None
    app_id: str | None = None
    timeout: float = TOKEN_TIMEOUT
    hosts: Hosts = Hosts()
    user: str | None = None  # the open_id, for TokenKind.USER only

    @classmethod
    def of(
        cls,
        system: TokenSystem,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
        timeout: float = TOKEN_TIMEOUT,
        hosts: Iterable[str] = (),
    ) -> TokenTarget:
        """The target of a get with these arguments, sent to the app's own origin and the
        ``hosts`` listed (:meth:`Hosts.of`). Arguments a get would refuse (``user=`` missing for
        ``TokenKind.USER`` or given for another kind, an unknown app, ...) are refused here with
        ``ValueError``, before any request is made."""
        app = app_of(system, app_id)
        key = resolve_key(system.apps, kind, tenant_key, app_id, user)
        if key.kind is TokenKind.JSAPI_TICKET:
            msg = "a jsapi_ticket signs JSSDK pages (jsapi_config); it is no Bearer token"
            raise ValueError(msg)
        own = Hosts.of(app.base_url, hosts)
        return cls(system.proxy, key.kind, tenant_key, app_id, timeout, own, user)

    def get(self) -> str:
        future = self.proxy.get_token(
            self.kind, tenant_key=self.tenant_key, app_id=self.app_id, user=self.user
        )
        return future.get(timeout=self.timeout)

    async def aget(self) -> str:
        async with asyncio.timeout(self.timeout):
            return await self.proxy.aget_token(
                self.kind, tenant_key=self.tenant_key, app_id=self.app_id, user=self.user
            )

    def invalidate(self, token: str) -> None:
        self.proxy.invalidate(token).get(timeout=self.timeout)

    async def ainvalidate(self, token: str) -> None:
        async with asyncio.timeout(self.timeout):
            await self.proxy.ainvalidate(token)

    def flow(
        self,
        *,
        url: str,
        send: Callable[[str | None], X],
        answered_from: Callable[[A], str],
        read_code: Callable[[A], object],
        rewind: Callable[[], bool],
    ) -> Generator[X, A, None]:
        """:func:`exchange` for a request to ``url``, with the token got and invalidated
        blocking: yields ``send(token)`` for each send (``send(None)``: without our token) and
        takes that send's answer back. ``answered_from`` says which URL an answer came from,
        ``read_code`` reads its code, ``rewind`` readies the body for a resend
        (:class:`Rewind`)."""
        steps = exchange(self.hosts, url, kind=self.kind)
        reply: object = None  # a generator starts on None
        while (step := _next(steps, reply)) is not None:
            if isinstance(step, Send):
                reply = yield send(step.token)
            elif isinstance(step, ReadCode):
                reply = read_code(step.answer)
            elif isinstance(step, Invalidate):
                self.invalidate(step.token)
                reply = None
            elif isinstance(step, Fetch):
                reply = self.get()
            else:
                reply = _answer(step, answered_from, rewind)

    async def aflow(
        self,
        *,
        url: str,
        send: Callable[[str | None], X],
        answered_from: Callable[[A], str],
        read_code: Callable[[A], Awaitable[object]],
        rewind: Callable[[], bool],
    ) -> AsyncGenerator[X, A]:
        """:meth:`flow` for coroutines: the token and the code are awaited."""
        steps = exchange(self.hosts, url, kind=self.kind)
        reply: object = None  # a generator starts on None
        while (step := _next(steps, reply)) is not None:
            if isinstance(step, Send):
                reply = yield send(step.token)
            elif isinstance(step, ReadCode):
                reply = await read_code(step.answer)
            elif isinstance(step, Invalidate):
                await self.ainvalidate(step.token)
                reply = None
            elif isinstance(step, Fetch):
                reply = await self.aget()
            else:
                reply = _answer(step, answered_from, rewind)


def _answer(
    step: AnsweredFrom | Rewind, answered_from: Callable[[Any], str], rewind: Callable[[], bool]
) -> object:
    """The steps a front answers the same way in both drivers: no I/O to wait for."""
    return answered_from(step.answer) if isinstance(step, AnsweredFrom) else rewind()


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


def app_of(system: TokenSystem, app_id: str | None) -> AppConfig:
    """The app of ``system`` a call names (``None``: the only one); ValueError if none is."""
    return resolve_app(system.apps, app_id)


class TokenAuth:
    """The constructor the HTTP client auths share: which token they send for ``system`` (a
    user's with ``TokenKind.USER`` and ``user=open_id``), and to which hosts: the app's own (its
    ``base_url``'s) and the ``hosts`` listed."""

    def __init__(
        self,
        system: TokenSystem,
        kind: TokenKind = TokenKind.TENANT,
        *,
        tenant_key: str | None = None,
        app_id: str | None = None,
        user: str | None = None,
        hosts: Iterable[str] = (),
        timeout: float = TOKEN_TIMEOUT,
    ) -> None:
        self._target = TokenTarget.of(
            system,
            kind,
            tenant_key=tenant_key,
            app_id=app_id,
            user=user,
            timeout=timeout,
            hosts=hosts,
        )
