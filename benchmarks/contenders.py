"""The systems a scenario compares, behind one interface, and the apps they use on the fake
server (``actors.testing.FakeFeishuProcess``: the server in a process of its own, so that its
CPU does not take the callers' GIL, as Feishu's does not).

- ``actors``: this library, as application code uses it (``proxy.get_token(...).get()``);
  ``actors (mailbox only)`` with ``fast_reads=False``.
- ``mutex``: the design this library replaces: one ``threading.Lock`` guards a dict cache and
  is held across the HTTP fetch, so every get serialises and a miss fetches inside the lock.
- ``double-checked``: hits read the dict without a lock; a miss takes the lock, checks again and
  fetches holding it (so concurrent misses share one fetch).
- ``oracle``: a constant, no tokens at all: the physical limit.
- ``lark-oapi``: the official SDK's ``TokenManager``, unchanged.

Both lock designs fetch with the library's own Feishu client (same endpoints, timeouts and
parsing) and serve a token while ``now < expires_at - safety_margin``, with ``expires_at``
measured from when the request left, as the library does; they have no background refresh.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests

import actors
from actors.feishu._client import FeishuAuthClient
from actors.testing import FakeFeishuProcess

__all__ = [
    "ACTORS",
    "DOUBLE_CHECKED",
    "LARK_OAPI",
    "MAILBOX",
    "MUTEX",
    "ORACLE",
    "Actors",
    "App",
    "Contender",
    "build",
    "lark_oapi_version",
    "new_app",
]

ORACLE = "oracle"
MUTEX = "mutex"
DOUBLE_CHECKED = "double-checked"
ACTORS = "actors"
MAILBOX = "actors (mailbox only)"
LARK_OAPI = "lark-oapi"

GET_TIMEOUT = 60.0
_serial = itertools.count(1)


class Contender(Protocol):
    """One of the systems compared: a token per get, and a way to stop it."""

    def get(self, tenant_key: str | None = None) -> str: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class App:
    """An app registered on the fake server, and its app_ticket (marketplace apps)."""

    config: actors.AppConfig
    ticket: str | None


def new_app(server: FakeFeishuProcess, *, marketplace: bool = False) -> App:
    """A new app on ``server``: fresh caches upstream for every run. Its id is unique across
    processes (lark-oapi's cache is process-global and keyed by app_id alone)."""
    app_id = f"cli_bench_{os.getpid()}_{next(_serial)}"
    secret = f"secret-{app_id}"
    ticket = server.add_app(app_id, secret, marketplace=marketplace)
    app_type = actors.AppType.MARKETPLACE if marketplace else actors.AppType.SELF_BUILT
    config = actors.AppConfig(app_id, secret, app_type=app_type, base_url=server.base_url)
    return App(config, ticket)


class Actors:
    """This library. ``metrics_line()`` summarises its metrics for a note."""

    def __init__(self, app: App, policy: actors.RefreshPolicy, *, fast_reads: bool = True) -> None:
        self.system = actors.TokenSystem.start(app.config, policy=policy, fast_reads=fast_reads)
        self.proxy = self.system.proxy
        self._app_id = app.config.app_id
        if app.ticket is not None:
            self.proxy.set_app_ticket(app.ticket, app_id=self._app_id).get(timeout=GET_TIMEOUT)

    def get(self, tenant_key: str | None = None) -> str:
        future = self.proxy.get_token(tenant_key=tenant_key, app_id=self._app_id)
        return future.get(timeout=GET_TIMEOUT)

    def metrics_line(self) -> str:
        m = self.system.metrics()
        return (
            f"hits {m.hits:,}, misses {m.misses:,}, coalesced {m.coalesced:,}, stale served "
            f"{m.stale_served:,}, prewarms {m.prewarms:,}, upstream ok {m.fetch_success:,} / "
            f"failed {m.fetch_failure:,}"
        )

    def close(self) -> None:
        self.system.stop()


class Oracle:
    TOKEN = "t-oracle"

    def get(self, tenant_key: str | None = None) -> str:
        return self.TOKEN

    def close(self) -> None:
        return None


_Cached = tuple[str, float]  # (token, serve until): immutable, so a lock-free read sees it whole


class _Locked:
    """What both lock designs share: a dict cache filled through the library's client. Every
    method runs under the subclass's lock, except :meth:`lookup`."""

    def __init__(self, app: App, policy: actors.RefreshPolicy) -> None:
        self._app, self._ticket, self._margin = app.config, app.ticket, policy.safety_margin
        self._session = requests.Session()
        self._client = FeishuAuthClient(self._session, timeout=policy.request_timeout)
        self._tokens: dict[str | None, _Cached] = {}
        self._app_token: _Cached | None = None
        self._lock = threading.Lock()

    def lookup(self, tenant_key: str | None) -> str | None:
        cached = self._tokens.get(tenant_key)
        return cached[0] if cached is not None and time.monotonic() < cached[1] else None

    def fetch(self, tenant_key: str | None) -> str:
        token = self.lookup(tenant_key)
        if token is not None:
            return token
        try:
            cached = self._fetch(actors.TokenKind.TENANT, tenant_key)
        except actors.UpstreamError as exc:
            if exc.code not in actors.TOKEN_INVALID_CODES:
                raise
            # The app token expired on the way (docs/feishu-protocol.md): drop it, fetch again.
            self._app_token = None
            cached = self._fetch(actors.TokenKind.TENANT, tenant_key)
        self._tokens[tenant_key] = cached
        return cached[0]

    def _fetch(self, kind: actors.TokenKind, tenant_key: str | None = None) -> _Cached:
        app_token = None
        if kind is actors.TokenKind.TENANT and self._app.app_type is actors.AppType.MARKETPLACE:
            if self._app_token is None or time.monotonic() >= self._app_token[1]:
                self._app_token = self._fetch(actors.TokenKind.APP)
            app_token = self._app_token[0]
        request = actors.TokenRequest(
            app=self._app,
            kind=kind,
            tenant_key=tenant_key,
            app_ticket=self._ticket,
            app_token=app_token,
        )
        started = time.monotonic()
        grant = self._client.fetch(request)
        return grant.token, started + grant.expire - self._margin

    def close(self) -> None:
        self._session.close()


class Mutex(_Locked):
    def get(self, tenant_key: str | None = None) -> str:
        with self._lock:
            return self.fetch(tenant_key)


class DoubleChecked(_Locked):
    def get(self, tenant_key: str | None = None) -> str:
        token = self.lookup(tenant_key)
        if token is not None:
            return token
        with self._lock:
            return self.fetch(tenant_key)


def lark_oapi_version() -> str | None:
    """lark-oapi's version if it can be imported (an optional dependency), else None."""
    try:
        from importlib.metadata import version

        import lark_oapi.core.token.manager  # noqa: F401 - the import is the check

        return version("lark-oapi")
    except Exception:
        return None


class LarkOapi:
    """lark-oapi's ``TokenManager`` for a self-built app, pointed at the fake through
    ``Config.domain`` (the SDK's documented way to target another domain)."""

    def __init__(self, app: App) -> None:
        from lark_oapi.core.model import Config
        from lark_oapi.core.token.manager import TokenManager

        self._conf = Config()
        self._conf.app_id, self._conf.app_secret = app.config.app_id, app.config.app_secret
        self._conf.domain = app.config.base_url
        self._fetch: Callable[[Any], str] = TokenManager.get_self_tenant_token

    def get(self, tenant_key: str | None = None) -> str:
        return self._fetch(self._conf)

    def close(self) -> None:
        return None


def build(name: str, app: App, policy: actors.RefreshPolicy) -> Contender:
    """Start contender ``name`` for ``app``; the lock designs take the policy's margin and
    timeouts."""
    factories: dict[str, Callable[[], Contender]] = {
        ORACLE: Oracle,
        MUTEX: lambda: Mutex(app, policy),
        DOUBLE_CHECKED: lambda: DoubleChecked(app, policy),
        ACTORS: lambda: Actors(app, policy),
        MAILBOX: lambda: Actors(app, policy, fast_reads=False),
        LARK_OAPI: lambda: LarkOapi(app),
    }
    return factories[name]()
