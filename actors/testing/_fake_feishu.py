"""The embedded fake Feishu auth server for tests, demos, simulations and benchmarks.

:class:`FakeFeishu` is a real HTTP/1.1 server on loopback that speaks the auth v3 contract of
``docs/feishu-protocol.md``: self-built and marketplace app/tenant tokens, app_ticket resend, the
error codes and the 30-minute same-token rule, with expiry computed on an injectable clock.
Tests steer it with scripted :class:`Reply` objects, :class:`Gate` holds and latency,
and inspect it through :class:`RecordedRequest` records and concurrency counters. Business
Open API routes that take a bearer token live in ``_business``, the app_ticket event push
in ``_events``, the authorize page and user-token endpoints in ``_oauth``.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import actors.testing._protocol as wire
from actors._clock import Clock, SystemClock
from actors._config import AppType, TokenKind
from actors.feishu._protocol import Endpoint
from actors.testing._assertions import PublicKey, load_public_key
from actors.testing._business import BUSINESS, BusinessApi, BusinessServer
from actors.testing._events import EventPusher, Schema
from actors.testing._ledger import App, Ledger
from actors.testing._oauth import OAuthApi
from actors.testing._replies import (
    Exchange,
    Gate,
    Headers,
    Match,
    RecordedRequest,
    Reply,
    matches,
)
from actors.testing._traffic import Traffic
from actors.testing._transports import InProcessAdapter

__all__ = ["FakeFeishu"]


def _route_kind(endpoint: Endpoint) -> str:
    """The kind a request to ``endpoint`` is recorded and scripted under."""
    return endpoint.kind.value if endpoint.kind is not None else "resend"


_KINDS = frozenset(
    {"any", BUSINESS, *wire.OAUTH_KINDS, *(_route_kind(e) for e in wire.ROUTES.values())}
)
# The token requests that outages and the failure rate answer with an HTML 503.
_FAILING = frozenset({TokenKind.APP, TokenKind.TENANT, wire.USER})
_Body: TypeAlias = dict[str, object]


_T = TypeVar("_T")


@dataclass(frozen=True)
class _Answer:
    reply: Reply
    after: Callable[[], None] | None = None


class FakeFeishu:
    """A thread-safe fake of the Feishu auth v3 endpoints on ``127.0.0.1``.

    Every request is recorded on arrival, passes the matching holds and the latency, then
    takes the first matching scripted reply, else the normal answer. :attr:`business` serves
    bearer-token calls (``_business``), :attr:`oauth` the login and user tokens (``_oauth``).

    Args:
        clock: Time source for token expiry and request timestamps (default: system clock).
        token_lifetime: Lifetime of a new token, in clock seconds.
        refresh_window: While at least this much remains, the current token is returned again.
        latency: Real seconds every request waits before it is answered.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        token_lifetime: float = 7200.0,
        refresh_window: float = 1800.0,
        latency: float = 0.0,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._ledger = Ledger(self._clock, lifetime=token_lifetime, window=refresh_window)
        self._lock = threading.Lock()
        self.business = BusinessApi(self._ledger, self._lock)
        self.oauth = OAuthApi(self._ledger, self._lock, self._clock, audience=self._audience)
        self._pushers: dict[str | None, EventPusher] = {}
        self._latency = _non_negative(latency)
        self._tenant_latency: dict[str, float] = {}
        self._scripts: list[tuple[Match, Reply]] = []
        self._gates: list[Gate] = []
        self._traffic = Traffic()
        self._failure_rate = 0.0
        self._outage = False
        self._rng = random.Random(0)
        # Set by stop(): cuts latency waits short so no handler thread outlives the server.
        self._stopping = threading.Event()
        self._httpd: BusinessServer | None = None
        self._thread: threading.Thread | None = None
        self.on_ticket_resend: Callable[[str, str], None] | None = None

    def start(self) -> Self:
        """Bind a free loopback port and serve in a daemon thread. Returns ``self``."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("FakeFeishu cannot be restarted after stop(); make a new one")
            if self._httpd is not None:
                return self
            self._httpd = BusinessServer(self)
            # A short poll interval keeps stop() quick; the loop is idle otherwise.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"FakeFeishu:{self._httpd.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release every gate, stop serving and join the server thread. Idempotent."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            gates, self._gates = self._gates, []
            httpd, thread = self._httpd, self._thread
        for gate in gates:
            gate.release()
        if not first or httpd is None or thread is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def adapter(self) -> InProcessAdapter:
        """A ``requests`` adapter reaching this server without a socket (mount it on
        :attr:`base_url`); for long simulations where loopback HTTP would dominate."""
        return InProcessAdapter(self)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; only available once started."""
        if self._httpd is None:
            raise RuntimeError("FakeFeishu.base_url: call start() first")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add_app(
        self,
        app_id: str,
        app_secret: str | None = None,
        *,
        marketplace: bool = False,
        public_key: PublicKey | bytes | str | None = None,
    ) -> None:
        """Register (or replace) an app with its secret; marketplace apps start without a ticket.

        ``public_key`` (an RSA or EC P-256 public key, or its PEM) registers the key the app's
        client assertions are verified with (``docs/feishu-protocol.md``, "Keyless apps"); with
        it alone the app is keyless: no secret works for it. Self-built apps only.
        """
        app = _app(app_id, app_secret, marketplace=marketplace, public_key=public_key)
        with self._lock:
            self._ledger.apps[app_id] = app

    def issue_ticket(self, app_id: str) -> str:
        """Mint a new current app_ticket for a marketplace app and return it; older ones die."""
        with self._lock:
            return self._ledger.mint_ticket(app_id)

    def push_events_to(
        self,
        url: str,
        *,
        verification_token: str,
        encrypt_key: str | None = None,
        app_id: str | None = None,
        schema: Schema = "1.0",
    ) -> EventPusher:
        """After each ``app_ticket/resend`` (of ``app_id``, or of any app), POST the new ticket
        to ``url`` as Feishu does: an app_ticket event carrying ``verification_token``,
        encrypted and signed with ``encrypt_key`` (clear JSON without one). The
        :attr:`on_ticket_resend` callback, if set, is called as well. Returns the pusher, which
        records every delivery. A later call for the same ``app_id`` replaces the URL."""
        pusher = EventPusher(
            url, verification_token=verification_token, encrypt_key=encrypt_key, schema=schema
        )
        with self._lock:
            self._pushers[app_id] = pusher
        return pusher

    def set_latency(self, seconds: float, *, tenant_key: str | None = None) -> None:
        """Set the global latency, or the latency of tenant token requests for ``tenant_key``."""
        with self._lock:
            if tenant_key is None:
                self._latency = _non_negative(seconds)
            else:
                self._tenant_latency[tenant_key] = _non_negative(seconds)

    def set_failure_rate(self, rate: float, *, seed: int | None = None) -> None:
        """Answer this share of token requests with an HTML 503 page (seeded, reproducible)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"FakeFeishu: failure rate must be in [0, 1], got {rate!r}")
        with self._lock:
            self._failure_rate = float(rate)
            if seed is not None:
                self._rng = random.Random(seed)

    def set_outage(self, down: bool) -> None:
        """While down, every token request is answered with an HTML 503 page."""
        with self._lock:
            self._outage = down

    def expires_at(self, token: str) -> float | None:
        """When the server stops accepting ``token`` (clock time), or None if it never issued it."""
        issued = self._locked(lambda: self._ledger.find(token))
        return issued.expires_at if issued is not None else None

    def script(
        self, kind: str, *replies: Reply, app_id: str | None = None, tenant_key: str | None = None
    ) -> None:
        """Queue replies for the next matching requests, first in, first out.

        A reply is taken when a request is answered (after holds and latency), so a script
        added while a request is held still applies to it.
        """
        _check_kind("script", kind)
        match = (kind, app_id, tenant_key)
        with self._lock:
            self._scripts.extend((match, reply) for reply in replies)

    def hold(
        self, kind: str = "any", *, app_id: str | None = None, tenant_key: str | None = None
    ) -> Gate:
        """Block every matching request before it is answered, until the gate is released."""
        _check_kind("hold", kind)
        gate = Gate(kind, app_id, tenant_key)
        with self._lock:
            if self._stopping.is_set():
                gate.release()
            else:
                self._gates = [g for g in self._gates if not g.is_open]
                self._gates.append(gate)
        return gate

    def rotate(self, app_id: str | None = None) -> None:
        """Revoke every token of ``app_id`` (or of all apps); the next request mints anew."""
        with self._lock:
            self._ledger.rotate(app_id)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every recorded request, in arrival order."""
        return self._locked(lambda: list(self._traffic.requests))

    def count(
        self, kind: str | None = None, *, app_id: str | None = None, tenant_key: str | None = None
    ) -> int:
        """How many recorded requests match (``None`` or ``"any"`` kind: every kind)."""
        match = (kind or "any", app_id, tenant_key)
        with self._lock:
            return self._traffic.count(match)

    @property
    def in_flight(self) -> int:
        """Requests arrived but not yet answered."""
        return self._locked(lambda: self._traffic.in_flight)

    @property
    def max_in_flight(self) -> int:
        """The peak of :attr:`in_flight` since start or :meth:`reset_stats`."""
        return self._locked(lambda: self._traffic.max_in_flight)

    @property
    def max_in_flight_per_key(self) -> int:
        """The peak number of concurrent requests for one (kind, app_id, tenant_key)."""
        return self._locked(lambda: self._traffic.max_per_key)

    @property
    def connections(self) -> int:
        """TCP connections accepted since start: a client reusing its connections opens few."""
        return 0 if self._httpd is None else self._httpd.accepted

    def reset_stats(self) -> None:
        """Forget the recorded requests and the concurrency peaks."""
        with self._lock:
            self._traffic.reset()

    def valid_token(self, token: str) -> bool:
        """Whether the server would accept ``token`` now: issued, not rotated, not expired."""
        return self._locked(lambda: self._ledger.alive(token) is not None)

    def _audience(self) -> str:  # what client assertions are addressed to: this server
        return urlsplit(self.base_url).netloc

    def _locked(self, read: Callable[[], _T]) -> _T:
        with self._lock:
            return read()

    def handle(
        self, path: str, raw: bytes, *, method: str = "POST", headers: Headers = ()
    ) -> Exchange:
        """Answer one request; both transports (loopback HTTP, in-process) come through here."""
        body = _parse(raw)
        path, _, query = path.partition("?")
        route = wire.ROUTES.get(path) if method == "POST" else None
        with self._lock:
            req = _identify(self, (method, path, query), headers, route, (raw, body))
            self._traffic.arrive(req)
            gates = [g for g in self._gates if matches(g.match, req)]
            latency = self._latency
            if req.kind == TokenKind.TENANT and req.tenant_key in self._tenant_latency:
                latency = self._tenant_latency[req.tenant_key]
        try:
            for gate in gates:
                gate.wait_pass()
            if latency > 0:
                self._stopping.wait(latency)
            with self._lock:
                answer = self._answer(route, body, req)
        finally:
            # Counted down before writing, so a client holding its answer sees it settled.
            with self._lock:
                self._traffic.leave(req)
        return Exchange(answer.reply, req.kind, answer.after, self._stopping.is_set())

    def _answer(self, route: Endpoint | None, body: _Body | None, req: RecordedRequest) -> _Answer:
        scripted = _take_script(self._scripts, self._ledger, req)
        if scripted is not None:
            return _Answer(scripted)
        if req.kind in _FAILING and (
            self._outage or (self._failure_rate and self._rng.random() < self._failure_rate)
        ):
            return _Answer(Reply.http(503, "<html><body>503 Service Unavailable</body></html>"))
        if req.kind == BUSINESS:
            return _Answer(self.business.answer(req))
        if req.kind in wire.OAUTH_KINDS:
            return _Answer(self.oauth.answer(req, body))
        if body is None:
            msg = "Bad Request: body is not a JSON object"
            return _Answer(Reply.code(wire.BAD_BODY, msg, status=400))
        if route is None:
            return _Answer(Reply.code(wire.NOT_FOUND, "404 page not found", status=404))
        if route is wire.MARKETPLACE_TENANT:
            return _Answer(_marketplace_tenant(self._ledger, body))
        app_id = req.app_id or ""
        error = _check_app(self._ledger, app_id, route, body)
        if error is not None:
            return _Answer(error)
        if route.kind is None:
            pusher = self._pushers.get(app_id, self._pushers.get(None))
            return _resend(self._ledger, app_id, self.on_ticket_resend, pusher)
        return _Answer(Reply.ok(*self._ledger.grant(app_id, route.kind, None)))


def _take_script(
    scripts: list[tuple[Match, Reply]], ledger: Ledger, req: RecordedRequest
) -> Reply | None:
    """The first scripted reply matching ``req``, taken off the script; a token it answers is
    recorded as issued."""
    for i, (match, reply) in enumerate(scripts):
        if matches(match, req):
            del scripts[i]
            if reply.token is not None and reply.expire is not None and req.app_id:
                ledger.record(reply.token, req.app_id, req.kind, req.tenant_key, reply.expire)
            return reply
    return None


def _identify(
    fake: FakeFeishu,
    line: tuple[str, str, str],
    headers: Headers,
    route: Endpoint | None,
    content: tuple[bytes, _Body | None],
) -> RecordedRequest:
    """The record of a request on arrival, by the part of the server it is for."""
    method, path, query = line
    (raw, body), ledger, now = content, fake._ledger, fake._clock.now()
    business = fake.business.route(method, path)
    if business is not None:
        return fake.business.identify(business, query, headers, raw, now)
    oauth = fake.oauth.route(method, path)
    if oauth is not None:
        return fake.oauth.identify(oauth, line, headers, body, now)
    kind = _route_kind(route) if route is not None else "unknown"
    app_id = _str(body, wire.APP_ID)
    tenant_key = None
    if route is wire.MARKETPLACE_TENANT:
        tenant_key = _str(body, wire.TENANT_KEY)
        issued = ledger.find(_str(body, wire.APP_TOKEN) or "")
        app_id = issued.app_id if issued is not None else None
    return RecordedRequest(
        path, kind, app_id, tenant_key, now, method=method, query=query, headers=headers
    )


def _resend(
    ledger: Ledger,
    app_id: str,
    callback: Callable[[str, str], None] | None,
    pusher: EventPusher | None,
) -> _Answer:
    if callback is None and pusher is None:
        return _Answer(Reply.code(wire.OK, "ok"))
    ticket = ledger.mint_ticket(app_id)

    def deliver() -> None:  # after the answer is sent, as Feishu pushes after answering
        if callback is not None:
            callback(app_id, ticket)
        if pusher is not None:
            pusher.push_ticket(app_id, ticket)

    return _Answer(Reply.code(wire.OK, "ok"), deliver)


def _check_app(ledger: Ledger, app_id: str, route: Endpoint, body: _Body) -> Reply | None:
    app = ledger.apps.get(app_id)
    if app is None or app.marketplace != (route.app_type is AppType.MARKETPLACE):
        return Reply.code(wire.UNKNOWN_APP, "invalid param", status=400)
    if _str(body, wire.APP_SECRET) != app.secret:
        return Reply.code(wire.BAD_SECRET, "app secret invalid", status=400)
    if wire.APP_TICKET in route.request_fields and (
        not app.ticket or _str(body, wire.APP_TICKET) != app.ticket
    ):
        return Reply.code(wire.TICKET_INVALID, "app_ticket is invalid")
    return None


def _marketplace_tenant(ledger: Ledger, body: _Body) -> Reply:
    app_token = ledger.alive(_str(body, wire.APP_TOKEN) or "")
    if app_token is None or app_token.kind != TokenKind.APP:
        return Reply.code(wire.APP_TOKEN_INVALID, "app access token invalid")
    tenant_key = _str(body, wire.TENANT_KEY)
    if not tenant_key:
        return Reply.code(wire.UNKNOWN_APP, f"invalid param: {wire.TENANT_KEY}", status=400)
    return Reply.ok(*ledger.grant(app_token.app_id, TokenKind.TENANT, tenant_key))


def _check_kind(method: str, kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"FakeFeishu.{method}: kind must be one of {sorted(_KINDS)}: {kind!r}")


def _parse(raw: bytes) -> _Body | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return cast(_Body, body) if isinstance(body, dict) else None


def _str(body: _Body | None, key: str) -> str | None:
    value = body.get(key) if body is not None else None
    return value if isinstance(value, str) else None


def _non_negative(seconds: float) -> float:
    if seconds < 0:
        raise ValueError(f"FakeFeishu: latency must be >= 0, got {seconds!r}")
    return float(seconds)


def _app(
    app_id: str,
    app_secret: str | None,
    *,
    marketplace: bool,
    public_key: PublicKey | bytes | str | None,
) -> App:
    """The ledger's record of an app ``add_app`` registers; ValueError for an impossible one."""
    key = load_public_key(public_key) if public_key is not None else None
    if app_secret is None and key is None:
        raise ValueError(f"FakeFeishu.add_app({app_id!r}): give app_secret, public_key or both")
    if marketplace and key is not None:
        raise ValueError("FakeFeishu.add_app: a marketplace app cannot be keyless")
    # Nobody knows a keyless app's secret: the secret endpoints refuse it like a wrong one.
    secret = app_secret if app_secret is not None else secrets.token_urlsafe(32)
    return App(secret, marketplace, public_key=key)
