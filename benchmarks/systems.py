"""The systems under comparison, built against a fake Feishu (in this process, or in a child
process: :mod:`benchmarks.server_process`), behind one interface."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

import requests

import actors
from actors.testing import FakeFeishu
from benchmarks.baselines import (
    DoubleCheckedBaseline,
    MutexBaseline,
    Oracle,
    PykkaAskFloor,
    ResolvedFutureFloor,
    TokenSource,
    lark_oapi_peer,
)
from benchmarks.server_process import ServerProcess

__all__ = [
    "ACTORS",
    "ACTORS_MAILBOX",
    "DOUBLE_CHECKED",
    "FUTURE_FLOOR",
    "LARK_OAPI",
    "MUTEX",
    "ORACLE",
    "PYKKA_ASK",
    "ActorsSource",
    "AppEndpoint",
    "RemoteUpstream",
    "Upstream",
    "build",
    "remote_upstream",
    "upstream",
]

ORACLE = "oracle"
MUTEX = "mutex"
DOUBLE_CHECKED = "double-checked"
ACTORS = "actors"
ACTORS_MAILBOX = "actors (mailbox only)"
PYKKA_ASK = "pykka ask (floor)"
LARK_OAPI = "lark-oapi"
FUTURE_FLOOR = "dict + resolved future (floor)"

GET_TIMEOUT = 60.0
_app_ids = itertools.count(1)


class AppEndpoint(Protocol):
    """What :func:`build` needs: an app registered on a running fake server (its ``base_url``
    points there) and its current app_ticket (marketplace apps)."""

    @property
    def app(self) -> actors.AppConfig: ...

    @property
    def ticket(self) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class Upstream:
    """A running fake Feishu with one registered app (and its current app_ticket)."""

    server: FakeFeishu
    app: actors.AppConfig
    ticket: str | None


@contextlib.contextmanager
def upstream(
    *,
    marketplace: bool = False,
    latency: float = 0.0,
    token_lifetime: float = 7200.0,
    refresh_window: float = 1800.0,
) -> Iterator[Upstream]:
    """A fresh FakeFeishu with one app whose id is unique in this process (lark-oapi's cache is
    process-global and keyed by app_id only, so no two runs may share an id)."""
    app_id = f"cli_bench_{next(_app_ids)}"
    secret = f"secret-{app_id}"
    with FakeFeishu(
        latency=latency, token_lifetime=token_lifetime, refresh_window=refresh_window
    ) as server:
        server.add_app(app_id, secret, marketplace=marketplace)
        app_type = actors.AppType.MARKETPLACE if marketplace else actors.AppType.SELF_BUILT
        app = actors.AppConfig(app_id, secret, app_type=app_type, base_url=server.base_url)
        ticket = server.issue_ticket(app_id) if marketplace else None
        yield Upstream(server, app, ticket)


@dataclasses.dataclass(frozen=True)
class RemoteUpstream:
    """An app of its own on a fake Feishu running in a child process (:class:`ServerProcess`)."""

    server: ServerProcess
    app: actors.AppConfig
    ticket: str | None


def remote_upstream(server: ServerProcess, *, marketplace: bool = False) -> RemoteUpstream:
    """Register a new app (id unique in this process) on ``server``: every run gets fresh
    caches upstream too, while all of them talk to the same server process."""
    app_id = f"cli_bench_{next(_app_ids)}"
    secret = f"secret-{app_id}"
    ticket = server.add_app(app_id, secret, marketplace=marketplace)
    app_type = actors.AppType.MARKETPLACE if marketplace else actors.AppType.SELF_BUILT
    app = actors.AppConfig(app_id, secret, app_type=app_type, base_url=server.base_url)
    return RemoteUpstream(server, app, ticket)


class ActorsSource:
    """The project, used the way application code uses it: ``proxy.get_token(...).get()``."""

    def __init__(
        self,
        app: actors.AppConfig,
        *,
        policy: actors.RefreshPolicy,
        ticket: str | None = None,
        fast_reads: bool = True,
        clock: actors.Clock | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.system = actors.TokenSystem.start(
            app, policy=policy, clock=clock, session=session, fast_reads=fast_reads
        )
        self._proxy = self.system.proxy
        self._app_id = app.app_id
        if ticket is not None:
            self._proxy.set_app_ticket(ticket, app_id=app.app_id).get(timeout=GET_TIMEOUT)

    def get(self, tenant_key: str | None = None) -> str:
        return self._proxy.get_token(tenant_key=tenant_key, app_id=self._app_id).get(
            timeout=GET_TIMEOUT
        )

    def close(self) -> None:
        self.system.stop()


def build(name: str, up: AppEndpoint, policy: actors.RefreshPolicy) -> TokenSource:
    """Start system ``name`` against ``up``; baselines take the policy's margin and timeouts."""
    factories: dict[str, Callable[[], TokenSource]] = {
        ORACLE: Oracle,
        PYKKA_ASK: PykkaAskFloor,
        FUTURE_FLOOR: ResolvedFutureFloor,
        MUTEX: lambda: MutexBaseline(
            up.app,
            app_ticket=up.ticket,
            safety_margin=policy.safety_margin,
            timeout=policy.request_timeout,
        ),
        DOUBLE_CHECKED: lambda: DoubleCheckedBaseline(
            up.app,
            app_ticket=up.ticket,
            safety_margin=policy.safety_margin,
            timeout=policy.request_timeout,
        ),
        ACTORS: lambda: ActorsSource(up.app, policy=policy, ticket=up.ticket),
        ACTORS_MAILBOX: lambda: ActorsSource(
            up.app, policy=policy, ticket=up.ticket, fast_reads=False
        ),
        LARK_OAPI: lambda: lark_oapi_peer(up.app),
    }
    return factories[name]()
