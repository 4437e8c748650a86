"""The fake Feishu server in a process of its own: ``python -m actors.testing serve``.

For code under test that runs in other processes (a service under ``uvicorn --workers 4``, a
benchmark whose callers must not share the server's GIL)::

    python -m actors.testing serve --port 9999 --app cli_x:secret_x
    FEISHU_BASE_URL=http://127.0.0.1:9999 uvicorn app:app --workers 4
    curl -s http://127.0.0.1:9999/_fake/stats

The command prints the URL it serves on (one line, flushed), then serves a
:class:`~actors.testing.FakeFeishu` on loopback until SIGTERM or SIGINT, or, when its stdin is a
pipe, until that pipe's EOF (the parent closed it, or died: the kernel closes a dead process's
pipes) or until its parent process changes. Control routes sit beside Feishu's, under
``/_fake/`` (JSON in and out):

- ``GET /_fake/stats[?app_id=&since=&until=]``: requests per route and per key (kind, app_id,
  tenant_key), optionally only one app's and those that arrived in ``[since, until)`` on the
  server's clock (``time.monotonic()``; ``now`` in the answer is that clock's reading), and the
  concurrency: ``in_flight``, ``max_in_flight``, ``max_in_flight_per_key``;
- ``POST /_fake/apps`` ``{"app_id", "app_secret", "marketplace": false}``: register an app (a
  marketplace app's first app_ticket comes back as ``app_ticket``);
- ``POST /_fake/tickets`` ``{"app_id"}``: a new current app_ticket for a marketplace app;
- ``POST /_fake/latency`` ``{"seconds", "tenant_key": null}``: every request's latency, or that
  of one tenant's token requests;
- ``POST /_fake/reset``: forget the recorded requests and the concurrency peaks;
- ``POST /_fake/users`` ``{"open_id", "name": null, "tenant_key": "fake-tenant"}``: add a test
  user (the first one added is signed in);
- ``POST /_fake/codes`` ``{"app_id", "redirect_uri", "user": null, "scope": ["offline_access"],
  "code_challenge": null}``: an authorization code, as the authorize page redirects with;
- ``POST /_fake/lifetimes`` ``{"access_token", "refresh_token", "code", "grant"}`` (each
  optional): lifetimes in seconds of what is issued from now on;
- ``GET /_fake/oauth[?app_id=]``: the grants' chains: ``refresh_reuses``, and per user the
  ``rotations``, the code ``exchanges`` and whether the grant is ``alive`` (of ``app_id``, or of
  any app); ``GET /_fake/redemptions``: every request the token endpoints answered (at, on the
  server's clock, path, app_id, user, grant_type, code, reuse);
- ``POST /_fake/hold`` ``{"kind": "any", "app_id": null, "tenant_key": null}``: hold matching
  requests before they are answered (``{"hold": id}``); ``GET /_fake/holds`` lists each hold's
  ``waiting`` requests; ``POST /_fake/release`` ``{"hold": id}`` lets them through.

:class:`FakeFeishuProcess` runs the command from Python and wraps these routes; its
:attr:`~FakeFeishuProcess.oauth` has the names of ``FakeFeishu.oauth``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any, Self

from actors._clock import SystemClock
from actors.testing._business import BusinessServer
from actors.testing._fake_feishu import FakeFeishu
from actors.testing._oauth import Redemption
from actors.testing._replies import Exchange, Gate, Headers, RecordedRequest, Reply, dump_json

__all__ = ["FakeFeishuProcess", "ProcessGate", "ProcessOAuth", "main"]

CONTROL = "/_fake/"
_STOP_GRACE = 10.0  # seconds a stopping server may take before it exits regardless
_PARENT_POLL = 0.5
_CODE = "authorization_code"
_GATE_POLL = 0.01


class _NoRoute(Exception):
    pass


class _Control:
    """What the loopback server answers with: the control routes, else the fake's own."""

    def __init__(self, fake: FakeFeishu, clock: SystemClock) -> None:
        self.fake = fake
        self.clock = clock
        self._holds: dict[int, Gate] = {}
        self._lock = threading.Lock()

    def handle(
        self, path: str, raw: bytes, *, method: str = "POST", headers: Headers = ()
    ) -> Exchange:
        route, _, query = path.partition("?")
        if not route.startswith(CONTROL):
            return self.fake.handle(path, raw, method=method, headers=headers)
        try:
            status, answer = 200, self._answer(method, route.removeprefix(CONTROL), query, raw)
        except _NoRoute as exc:
            status, answer = 404, {"error": str(exc)}
        except KeyError as exc:
            status, answer = 400, {"error": f"missing field {exc}"}
        except (ValueError, TypeError) as exc:
            status, answer = 400, {"error": str(exc)}
        return Exchange(Reply.raw(dump_json(answer), status=status), "control", None, False)

    def _answer(self, method: str, name: str, query: str, raw: bytes) -> dict[str, Any]:
        fake = self.fake
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        if (method, name) == ("GET", "stats"):
            return _stats(fake, self.clock.now(), params)
        if (method, name) == ("GET", "oauth"):
            return _oauth_stats(fake, params.get("app_id"))
        if (method, name) == ("GET", "redemptions"):
            return {"redemptions": [dataclasses.asdict(r) for r in fake.oauth.redemptions]}
        if (method, name) == ("GET", "holds"):
            with self._lock:
                holds = sorted(self._holds.items())
            return {
                "holds": [{"hold": n, "waiting": g.waiting, "open": g.is_open} for n, g in holds]
            }
        if method != "POST":
            raise _NoRoute(f"no control route {method} {CONTROL}{name}")
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        if name == "apps":
            app_id, marketplace = str(body["app_id"]), bool(body.get("marketplace", False))
            fake.add_app(app_id, str(body["app_secret"]), marketplace=marketplace)
            return {"app_ticket": fake.issue_ticket(app_id) if marketplace else None}
        if name == "tickets":
            return {"app_ticket": fake.issue_ticket(str(body["app_id"]))}
        if name == "latency":
            fake.set_latency(float(body["seconds"]), tenant_key=body.get("tenant_key"))
            return {}
        if name == "reset":
            fake.reset_stats()
            return {}
        return self._steer(name, body)

    def _steer(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """The user-token side and the holds."""
        oauth = self.fake.oauth
        if name == "users":
            oauth.add_user(
                str(body["open_id"]),
                name=_optional_str(body, "name"),
                tenant_key=str(body.get("tenant_key", "fake-tenant")),
            )
            return {}
        if name == "codes":
            code = oauth.issue_code(
                str(body["app_id"]),
                str(body["redirect_uri"]),
                user=_optional_str(body, "user"),
                scope=[str(s) for s in body.get("scope", ["offline_access"])],
                code_challenge=_optional_str(body, "code_challenge"),
            )
            return {"code": code}
        if name == "lifetimes":
            given = {k: body.get(k) for k in ("access_token", "refresh_token", "code", "grant")}
            oauth.set_lifetimes(**{k: float(v) for k, v in given.items() if v is not None})
            return {}
        if name == "hold":
            gate = self.fake.hold(
                str(body.get("kind", "any")),
                app_id=_optional_str(body, "app_id"),
                tenant_key=_optional_str(body, "tenant_key"),
            )
            with self._lock:
                number = len(self._holds) + 1
                self._holds[number] = gate
            return {"hold": number}
        if name == "release":
            with self._lock:
                released = self._holds[int(body["hold"])]
            released.release()
            return {}
        raise _NoRoute(f"no control route POST {CONTROL}{name}")


def _stats(fake: FakeFeishu, now: float, params: dict[str, str]) -> dict[str, Any]:
    since, until = float(params.get("since", "-inf")), float(params.get("until", "inf"))
    app_id = params.get("app_id")

    def counted(r: RecordedRequest) -> bool:
        return since <= r.at < until and app_id in (None, r.app_id)

    requests = [r for r in fake.requests if counted(r)]
    keys = Counter((r.kind, r.app_id, r.tenant_key) for r in requests)
    return {
        "now": now,
        "requests": len(requests),
        "by_route": dict(Counter(r.path for r in requests)),
        "by_key": [
            {"kind": kind, "app_id": app, "tenant_key": tenant, "requests": n}
            for (kind, app, tenant), n in keys.items()
        ],
        "in_flight": fake.in_flight,
        "max_in_flight": fake.max_in_flight,
        "max_in_flight_per_key": fake.max_in_flight_per_key,
    }


def _oauth_stats(fake: FakeFeishu, app_id: str | None) -> dict[str, Any]:
    oauth = fake.oauth
    redemptions = oauth.redemptions
    users = sorted({r.user for r in redemptions if r.user is not None})
    exchanges = Counter(r.user for r in redemptions if r.grant_type == _CODE and r.code == 0)
    return {
        "refresh_reuses": oauth.refresh_reuses,
        "users": {
            user: {
                "rotations": oauth.rotations(user),
                "exchanges": exchanges[user],
                "alive": oauth.grant_alive(user, app_id=app_id),
            }
            for user in users
        },
    }


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


class _PortServer(BusinessServer):
    """The fake's loopback server on a chosen address (its base class binds a free port)."""

    def __init__(self, control: _Control, address: tuple[str, int]) -> None:
        self._address = address
        super().__init__(control)

    def server_bind(self) -> None:
        self.server_address = self._address
        super().server_bind()


# --- the command -------------------------------------------------------------------------------


def _loopback(host: str) -> str:
    address = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.IPv4Address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a loopback IPv4 address: {host!r} (the fake is local)")


def _app(spec: str) -> tuple[str, str, bool]:
    marketplace = spec.endswith(":marketplace")
    app_id, _, secret = spec.removesuffix(":marketplace").partition(":")
    if not app_id or not secret:
        raise argparse.ArgumentTypeError(f"expected ID:SECRET[:marketplace], got {spec!r}")
    return app_id, secret, marketplace


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m actors.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the fake Feishu on loopback; prints its URL",
        description="Serve the fake Feishu auth server on loopback and print its URL (one line). "
        f"Control routes: GET {CONTROL}stats, {CONTROL}oauth, {CONTROL}redemptions, "
        f"{CONTROL}holds; POST "
        f"{CONTROL}apps, {CONTROL}tickets, {CONTROL}latency, {CONTROL}reset, {CONTROL}users, "
        f"{CONTROL}codes, {CONTROL}lifetimes, {CONTROL}hold, {CONTROL}release. Stops on "
        "SIGTERM, SIGINT and, when stdin is a pipe, at its EOF.",
    )
    serve.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free one)")
    serve.add_argument("--host", type=_loopback, default="127.0.0.1", help="a loopback address")
    serve.add_argument(
        "--app",
        type=_app,
        action="append",
        default=[],
        metavar="ID:SECRET[:marketplace]",
        help="register an app (repeatable); a marketplace app gets its first app_ticket",
    )
    serve.add_argument("--token-lifetime", type=float, default=7200.0, metavar="SECONDS")
    serve.add_argument("--refresh-window", type=float, default=1800.0, metavar="SECONDS")
    serve.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    return parser


def _watch_pipe(stop: threading.Event) -> None:
    """Set ``stop`` at EOF on stdin or once the parent process is gone (re-parented)."""
    parent = os.getppid()
    with selectors.DefaultSelector() as selector:
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
        while not stop.is_set() and os.getppid() == parent:
            if selector.select(_PARENT_POLL) and not os.read(sys.stdin.fileno(), 4096):
                break
    stop.set()


def _stdin_is_pipe() -> bool:
    # Not a terminal or /dev/null: reading a terminal from the background would stop the
    # process, and /dev/null is at EOF from the start.
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def serve(args: argparse.Namespace) -> int:
    clock = SystemClock()
    fake = FakeFeishu(
        clock=clock,
        token_lifetime=args.token_lifetime,
        refresh_window=args.refresh_window,
        latency=args.latency,
    )
    for app_id, secret, marketplace in args.app:
        fake.add_app(app_id, secret, marketplace=marketplace)
        if marketplace:
            fake.issue_ticket(app_id)
    try:
        httpd = _PortServer(_Control(fake, clock), (args.host, args.port))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if _stdin_is_pipe():
        threading.Thread(target=_watch_pipe, args=(stop,), name="stdin-watch", daemon=True).start()
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="serve", daemon=True
    )
    thread.start()
    print(f"http://{args.host}:{httpd.server_address[1]}", flush=True)
    stop.wait()
    # Exit even if a handler keeps the shutdown from finishing.
    deadline = threading.Timer(_STOP_GRACE, os._exit, args=(0,))
    deadline.daemon = True
    deadline.start()
    fake.stop()  # releases gates and cuts latency waits short
    httpd.shutdown()
    httpd.server_close()
    httpd.close_connections()
    thread.join()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return serve(args)


# --- the parent's side -------------------------------------------------------------------------


class FakeFeishuProcess:
    """A FakeFeishu in a child process (``python -m actors.testing serve``), steered over its
    control routes. Start it (or use ``with``), register apps, read counts, stop it.

    The child dies with its parent: its stdin is a pipe from here. It runs in a session of its
    own, so a Ctrl-C in the terminal reaches the parent only, which stops it in order.

    Args:
        port: TCP port on 127.0.0.1 (default: a free one).
        token_lifetime, refresh_window, latency: as for :class:`~actors.testing.FakeFeishu`.
        startup_timeout: How long to wait for the child's URL (a cold interpreter on a busy
            machine takes a while).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token_lifetime: float = 7200.0,
        refresh_window: float = 1800.0,
        latency: float = 0.0,
        startup_timeout: float = 60.0,
    ) -> None:
        self._args = [
            f"--port={port}",
            f"--token-lifetime={token_lifetime!r}",
            f"--refresh-window={refresh_window!r}",
            f"--latency={latency!r}",
        ]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._base_url: str | None = None
        self.oauth = ProcessOAuth(self._call)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; only available once started."""
        if self._base_url is None:
            raise RuntimeError("FakeFeishuProcess.base_url: call start() first")
        return self._base_url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the child and wait for its URL; RuntimeError if it exits or stays silent."""
        if self._process is not None:
            return self
        command = [sys.executable, "-m", "actors.testing", "serve", *self._args]
        self._process = process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            self._base_url = _first_line(process, self._startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (kill after ``timeout``). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(
        self, *, app_id: str | None = None, since: float | None = None, until: float | None = None
    ) -> dict[str, Any]:
        """``GET /_fake/stats`` (see the module's documentation)."""
        params = {"app_id": app_id, "since": since, "until": until}
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._call("GET", "stats" + (f"?{query}" if query else ""))

    def count(
        self,
        *,
        app_id: str | None = None,
        kinds: tuple[str, ...] = ("app", "tenant"),
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        """Requests of ``kinds`` (default: token requests) that match, as :meth:`stats`."""
        keys = self.stats(app_id=app_id, since=since, until=until)["by_key"]
        return sum(int(key["requests"]) for key in keys if key["kind"] in kinds)

    def add_app(self, app_id: str, app_secret: str, *, marketplace: bool = False) -> str | None:
        """Register an app; a marketplace app's first app_ticket is returned."""
        body = {"app_id": app_id, "app_secret": app_secret, "marketplace": marketplace}
        ticket = self._call("POST", "apps", body)["app_ticket"]
        return None if ticket is None else str(ticket)

    def issue_ticket(self, app_id: str) -> str:
        """A new current app_ticket for a marketplace app."""
        return str(self._call("POST", "tickets", {"app_id": app_id})["app_ticket"])

    def set_latency(self, seconds: float, *, tenant_key: str | None = None) -> None:
        self._call("POST", "latency", {"seconds": seconds, "tenant_key": tenant_key})

    def reset_stats(self) -> None:
        self._call("POST", "reset", {})

    def hold(
        self, kind: str = "any", *, app_id: str | None = None, tenant_key: str | None = None
    ) -> ProcessGate:
        """Block every matching request before it is answered, until the gate is released
        (as :meth:`FakeFeishu.hold`)."""
        body = {"kind": kind, "app_id": app_id, "tenant_key": tenant_key}
        return ProcessGate(self._call, int(self._call("POST", "hold", body)["hold"]))

    def _call(self, method: str, route: str, body: object = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + CONTROL + route, data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise RuntimeError(f"FakeFeishuProcess: {method} {route}: {detail}") from None
        return answer


_Call = Callable[[str, str, object], dict[str, Any]]


class ProcessOAuth:
    """The user-token side of a :class:`FakeFeishuProcess` (its ``oauth``), with the names of
    ``FakeFeishu.oauth``'s: each is one call of the control routes."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    def add_user(
        self, open_id: str, *, name: str | None = None, tenant_key: str = "fake-tenant"
    ) -> None:
        """Register a test user; the first one added is signed in."""
        self._call("POST", "users", {"open_id": open_id, "name": name, "tenant_key": tenant_key})

    def issue_code(
        self,
        app_id: str,
        redirect_uri: str,
        *,
        user: str | None = None,
        scope: Iterable[str] = ("offline_access",),
        code_challenge: str | None = None,
    ) -> str:
        """An authorization code for ``user`` (default: the signed-in one)."""
        body = {"app_id": app_id, "redirect_uri": redirect_uri, "user": user, "scope": list(scope)}
        body["code_challenge"] = code_challenge
        return str(self._call("POST", "codes", body)["code"])

    def set_lifetimes(
        self,
        *,
        access_token: float | None = None,
        refresh_token: float | None = None,
        code: float | None = None,
        grant: float | None = None,
    ) -> None:
        """Lifetimes in seconds of what is issued from now on."""
        body = {"access_token": access_token, "refresh_token": refresh_token}
        self._call("POST", "lifetimes", body | {"code": code, "grant": grant})

    def stats(self, *, app_id: str | None = None) -> dict[str, Any]:
        """``GET /_fake/oauth`` (see the module's documentation)."""
        query = "" if app_id is None else "?" + urllib.parse.urlencode({"app_id": app_id})
        return self._call("GET", "oauth" + query, None)

    @property
    def refresh_reuses(self) -> int:
        """Refresh tokens presented after they were already redeemed (each answered 20064)."""
        return int(self.stats()["refresh_reuses"])

    def rotations(self, open_id: str | None = None) -> int:
        """Successful refreshes (of ``open_id``'s grants, or of all)."""
        users = self.stats()["users"]
        picked = users.values() if open_id is None else [users.get(open_id, {})]
        return sum(int(user.get("rotations", 0)) for user in picked)

    def exchanges(self, open_id: str) -> int:
        """Codes of ``open_id`` redeemed: the logins Feishu saw."""
        return int(self.stats()["users"].get(open_id, {}).get("exchanges", 0))

    def grant_alive(self, open_id: str, *, app_id: str | None = None) -> bool:
        """Whether ``open_id`` still holds a redeemable refresh token (of ``app_id``, or of any
        app)."""
        return bool(self.stats(app_id=app_id)["users"].get(open_id, {}).get("alive", False))

    @property
    def redemptions(self) -> list[Redemption]:
        """Every token-endpoint request the fake answered itself, in order."""
        return [Redemption(**r) for r in self._call("GET", "redemptions", None)["redemptions"]]


class ProcessGate:
    """A hold in a :class:`FakeFeishuProcess` (as :class:`~actors.testing.Gate`)."""

    def __init__(self, call: _Call, number: int) -> None:
        self._call = call
        self._number = number

    def release(self) -> None:
        """Let every blocked and future matching request through."""
        self._call("POST", "release", {"hold": self._number})

    @property
    def waiting(self) -> int:
        """How many requests are blocked on this gate right now."""
        holds = self._call("GET", "holds", None)["holds"]
        return next(int(h["waiting"]) for h in holds if h["hold"] == self._number)

    def wait_for_waiting(self, n: int, *, timeout: float = 5.0) -> bool:
        """Poll until at least ``n`` requests are blocked here; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while self.waiting < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_GATE_POLL)
        return True


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    stdout = process.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"FakeFeishuProcess: no URL from the server in {timeout:g} s")
    line = stdout.readline().strip()
    if not line:
        raise RuntimeError(f"FakeFeishuProcess: the server exited (status {process.wait()})")
    return line
