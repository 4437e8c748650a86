"""The embedded fake Feishu auth server for tests, demos, simulations and benchmarks.

:class:`FakeFeishu` is a real HTTP/1.1 server on loopback that speaks the auth v3 contract of
``FEISHU.md``: self-built and marketplace app/tenant tokens, app_ticket resend, the error codes
and the 30-minute same-token rule, with expiry computed on an injectable clock. Tests steer it
with scripted :class:`Reply` objects, :class:`Gate` holds and latency, and inspect it through
:class:`RecordedRequest` records and concurrency counters.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self, TypeAlias, cast

from actors._clock import Clock, SystemClock
from actors.testing._replies import Gate, Match, RecordedRequest, Reply, matches
from actors.testing._transports import InProcessAdapter, LoopbackServer

__all__ = ["Exchange", "FakeFeishu"]

_PREFIX = "/open-apis/auth/v3/"
# path -> (kind, is the marketplace variant)
_ROUTES: dict[str, tuple[str, bool]] = {
    _PREFIX + "app_access_token/internal": ("app", False),
    _PREFIX + "tenant_access_token/internal": ("tenant", False),
    _PREFIX + "app_access_token": ("app", True),
    _PREFIX + "tenant_access_token": ("tenant", True),
    _PREFIX + "app_ticket/resend": ("resend", True),
}
_KINDS = frozenset({"app", "tenant", "resend", "any"})
# Pruning expired tokens on every mint would make long simulations quadratic.
_PRUNE_EVERY = 1024

_Body: TypeAlias = dict[str, object]


@dataclass
class _App:
    secret: str = field(repr=False)
    marketplace: bool
    ticket: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Issued:
    token: str
    app_id: str
    kind: str
    tenant_key: str | None
    expires_at: float


@dataclass(frozen=True)
class Exchange:
    """How one request is answered: the reply, the request kind, an action to run after the
    answer is sent (the app_ticket push), and whether the connection should close."""

    reply: Reply
    kind: str
    after: Callable[[], None] | None
    close: bool


@dataclass(frozen=True)
class _Answer:
    reply: Reply
    after: Callable[[], None] | None = None


class FakeFeishu:
    """A thread-safe fake of the Feishu auth v3 endpoints on ``127.0.0.1``.

    Every request is recorded on arrival, then passes the matching holds, then the latency,
    then takes the first matching scripted reply, if any, else the normal answer.

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
        self._lifetime = token_lifetime
        self._window = refresh_window
        self._latency = _non_negative(latency)
        self._tenant_latency: dict[str, float] = {}
        self._lock = threading.Lock()
        self._apps: dict[str, _App] = {}
        self._current: dict[tuple[str, str, str | None], _Issued] = {}
        self._issued: dict[str, _Issued] = {}
        self._mints = 0
        self._scripts: list[tuple[Match, Reply]] = []
        self._gates: list[Gate] = []
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._key_in_flight: dict[Match, int] = {}
        self._max_key_in_flight = 0
        self._failure_rate = 0.0
        self._outage = False
        self._rng = random.Random(0)
        # Set by stop(): cuts latency waits short so no handler thread outlives the server.
        self._stopping = threading.Event()
        self._httpd: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self.on_ticket_resend: Callable[[str, str], None] | None = None

    def start(self) -> Self:
        """Bind a free loopback port and serve in a daemon thread. Returns ``self``."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("FakeFeishu cannot be restarted after stop(); make a new one")
            if self._httpd is not None:
                return self
            self._httpd = LoopbackServer(self)
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

    def add_app(self, app_id: str, app_secret: str, *, marketplace: bool = False) -> None:
        """Register (or replace) an app with its secret; marketplace apps start without a ticket."""
        with self._lock:
            self._apps[app_id] = _App(app_secret, marketplace)

    def issue_ticket(self, app_id: str) -> str:
        """Mint a new current app_ticket for a marketplace app and return it; older ones die."""
        with self._lock:
            return self._mint_ticket(app_id)

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
        with self._lock:
            issued = self._issued.get(token)
            return issued.expires_at if issued is not None else None

    def script(
        self, kind: str, *replies: Reply, app_id: str | None = None, tenant_key: str | None = None
    ) -> None:
        """Queue replies for the next matching requests, first in, first out.

        A reply is taken when a request is answered (after holds and latency), so a script
        added while a request is held still applies to it.
        """
        if kind not in _KINDS:
            raise ValueError(f"FakeFeishu.script: kind must be one of {sorted(_KINDS)}: {kind!r}")
        match = (kind, app_id, tenant_key)
        with self._lock:
            self._scripts.extend((match, reply) for reply in replies)

    def hold(
        self, kind: str = "any", *, app_id: str | None = None, tenant_key: str | None = None
    ) -> Gate:
        """Block every matching request before it is answered, until the gate is released."""
        if kind not in _KINDS:
            raise ValueError(f"FakeFeishu.hold: kind must be one of {sorted(_KINDS)}: {kind!r}")
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
            kept = {k: v for k, v in self._issued.items() if app_id not in (None, v.app_id)}
            self._issued = kept
            self._current = {k: v for k, v in self._current.items() if v.token in kept}

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every recorded request, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(
        self, kind: str | None = None, *, app_id: str | None = None, tenant_key: str | None = None
    ) -> int:
        """How many recorded requests match (``None`` or ``"any"`` kind: every kind)."""
        match = (kind or "any", app_id, tenant_key)
        with self._lock:
            return sum(1 for req in self._requests if matches(match, req))

    @property
    def in_flight(self) -> int:
        """Requests arrived but not yet answered."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The peak of :attr:`in_flight` since start or :meth:`reset_stats`."""
        with self._lock:
            return self._max_in_flight

    @property
    def max_in_flight_per_key(self) -> int:
        """The peak number of concurrent requests for one (kind, app_id, tenant_key)."""
        with self._lock:
            return self._max_key_in_flight

    def reset_stats(self) -> None:
        """Forget the recorded requests and the concurrency peaks."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight
            self._max_key_in_flight = max(self._key_in_flight.values(), default=0)

    def valid_token(self, token: str) -> bool:
        """Whether the server would accept ``token`` now: issued, not rotated, not expired."""
        with self._lock:
            issued = self._issued.get(token)
            return issued is not None and issued.expires_at > self._clock.now()

    def handle(self, path: str, raw: bytes) -> Exchange:
        """Answer one request; both transports (loopback HTTP, in-process) come through here."""
        body = _parse(raw)
        path = path.partition("?")[0]
        route = _ROUTES.get(path)
        with self._lock:
            req = self._identify(path, route, body)
            self._requests.append(req)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            key: Match = (req.kind, req.app_id, req.tenant_key)
            per_key = self._key_in_flight[key] = self._key_in_flight.get(key, 0) + 1
            self._max_key_in_flight = max(self._max_key_in_flight, per_key)
            gates = [g for g in self._gates if matches(g.match, req)]
            latency = self._latency
            if req.kind == "tenant" and req.tenant_key in self._tenant_latency:
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
                self._in_flight -= 1
                self._key_in_flight[key] -= 1
                if not self._key_in_flight[key]:
                    del self._key_in_flight[key]
        return Exchange(answer.reply, req.kind, answer.after, self._stopping.is_set())

    def _identify(
        self, path: str, route: tuple[str, bool] | None, body: _Body | None
    ) -> RecordedRequest:
        kind = route[0] if route else "unknown"
        app_id = _str(body, "app_id")
        tenant_key = None
        if route == ("tenant", True):
            tenant_key = _str(body, "tenant_key")
            issued = self._issued.get(_str(body, "app_access_token") or "")
            app_id = issued.app_id if issued is not None else None
        return RecordedRequest(path, kind, app_id, tenant_key, self._clock.now())

    def _answer(
        self, route: tuple[str, bool] | None, body: _Body | None, req: RecordedRequest
    ) -> _Answer:
        for i, (match, reply) in enumerate(self._scripts):
            if matches(match, req):
                del self._scripts[i]
                if reply.token is not None and reply.expire is not None and req.app_id:
                    expires_at = self._clock.now() + reply.expire
                    issued = _Issued(reply.token, req.app_id, req.kind, req.tenant_key, expires_at)
                    self._issued[reply.token] = issued
                return _Answer(reply)
        if req.kind in ("app", "tenant") and (
            self._outage or (self._failure_rate and self._rng.random() < self._failure_rate)
        ):
            return _Answer(Reply.http(503, "<html><body>503 Service Unavailable</body></html>"))
        if body is None:
            return _Answer(Reply.code(9499, "Bad Request: body is not a JSON object", status=400))
        if route is None:
            return _Answer(Reply.code(404, "404 page not found", status=404))
        if route == ("tenant", True):
            return self._marketplace_tenant(body)
        app_id = req.app_id or ""
        error = self._check_app(app_id, route, body)
        if error is not None:
            return _Answer(error)
        return self._resend(app_id) if route[0] == "resend" else self._grant(app_id, route[0], None)

    def _check_app(self, app_id: str, route: tuple[str, bool], body: _Body) -> Reply | None:
        app = self._apps.get(app_id)
        if app is None or app.marketplace != route[1]:
            return Reply.code(10003, "invalid param", status=400)
        if _str(body, "app_secret") != app.secret:
            return Reply.code(10014, "app secret invalid", status=400)
        if route == ("app", True) and (not app.ticket or _str(body, "app_ticket") != app.ticket):
            return Reply.code(10012, "app_ticket is invalid")
        return None

    def _resend(self, app_id: str) -> _Answer:
        callback = self.on_ticket_resend
        if callback is None:
            return _Answer(Reply.code(0, "ok"))
        ticket = self._mint_ticket(app_id)
        return _Answer(Reply.code(0, "ok"), lambda: callback(app_id, ticket))

    def _marketplace_tenant(self, body: _Body) -> _Answer:
        app_token = self._issued.get(_str(body, "app_access_token") or "")
        if app_token is None or app_token.kind != "app" or not self._alive(app_token):
            return _Answer(Reply.code(99991664, "app access token invalid"))
        tenant_key = _str(body, "tenant_key")
        if not tenant_key:
            return _Answer(Reply.code(10003, "invalid param: tenant_key", status=400))
        return self._grant(app_token.app_id, "tenant", tenant_key)

    def _grant(self, app_id: str, kind: str, tenant_key: str | None) -> _Answer:
        now = self._clock.now()
        current = self._current.get((app_id, kind, tenant_key))
        if current is None or int(current.expires_at - now) < self._window:
            token = f"{kind[0]}-{secrets.token_hex(16)}"
            current = _Issued(token, app_id, kind, tenant_key, now + self._lifetime)
            self._current[(app_id, kind, tenant_key)] = current
            self._issued[token] = current
            self._mints += 1
            if self._mints % _PRUNE_EVERY == 0:
                self._issued = {k: v for k, v in self._issued.items() if self._alive(v)}
        return _Answer(Reply.ok(current.token, int(current.expires_at - now)))

    def _alive(self, issued: _Issued) -> bool:
        return issued.expires_at > self._clock.now()

    def _mint_ticket(self, app_id: str) -> str:
        app = self._apps.get(app_id)
        if app is None or not app.marketplace:
            raise ValueError(f"FakeFeishu: {app_id!r} is not a registered marketplace app")
        app.ticket = f"tk-{secrets.token_hex(16)}"
        return app.ticket


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
