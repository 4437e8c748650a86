"""Reference implementations the project is measured against.

- :class:`MutexBaseline`: the seed's "current" design. One global ``threading.Lock`` guards the
  whole cache and is held across the HTTP fetch: every get serializes, a miss fetches inside it.
- :class:`DoubleCheckedBaseline`: the seed's option 1 (read/write lock). Hits read the dict
  without any lock (a dict read is atomic under the GIL and entries are immutable tuples, which is
  cheaper than any Python read lock); a miss takes the write lock, checks again, and fetches while
  holding it. Unlike the code the seed shipped, the write lock stays held across the fetch, so the
  double check really does prevent duplicate fetches.
- :class:`Oracle`: pays nothing for tokens (returns a constant): the physical limit.
- :class:`PykkaAskFloor`: a trivial pykka actor answering ``ask``: the framework's own floor.
- :class:`ResolvedFutureFloor`: a dict read of an already-resolved pykka future kept per cached
  token (made the way the project makes them): the floor of any hit path that keeps the
  futures API.
- :func:`lark_oapi_peer`: the official SDK's ``TokenManager`` (lark-oapi), driven unchanged.

Both lock baselines use one pooled ``requests.Session``, the same endpoints and the same
``(connect, read)`` timeouts as the project, cache marketplace app tokens, and serve a token only
while ``now < expires_at - safety_margin`` with ``expires_at`` measured from when the request left,
exactly like the project. They have no background refresh: the seed's designs do not prewarm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import pykka
import requests

from actors import AppConfig, AppType
from actors._config import TokenKind
from actors.feishu._protocol import (
    CODE_FIELD,
    CONTENT_TYPE,
    EXPIRE_FIELD,
    MSG_FIELD,
    TOKEN_INVALID_CODES,
    Rule,
    endpoint_for,
    rule_for,
)

__all__ = [
    "DoubleCheckedBaseline",
    "FeishuError",
    "FeishuFetcher",
    "MutexBaseline",
    "Oracle",
    "PykkaAskFloor",
    "ResolvedFutureFloor",
    "TokenSource",
    "lark_oapi_available",
    "lark_oapi_peer",
]

_HEADERS = {"Content-Type": CONTENT_TYPE}
DEFAULT_TIMEOUT = (3.05, 10.0)  # the project's RefreshPolicy.request_timeout default


class FeishuError(RuntimeError):
    def __init__(self, kind: str, code: object, msg: object) -> None:
        super().__init__(f"{kind} token request failed: code {code} {msg}")
        self.code = code


class TokenSource(Protocol):
    """What every benchmarked system looks like to the callers."""

    def get(self, tenant_key: str | None = None) -> str: ...

    def close(self) -> None: ...


class FeishuFetcher:
    """The baselines' HTTP side: one POST per token, body parsed whatever the status."""

    def __init__(
        self,
        app: AppConfig,
        *,
        app_ticket: str | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self._app = app
        self._ticket = app_ticket
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout

    def app_token(self) -> tuple[str, float]:
        return self._post(TokenKind.APP, app_ticket=self._ticket or "")

    def tenant_token(self, tenant_key: str | None, app_token: str | None) -> tuple[str, float]:
        return self._post(
            TokenKind.TENANT, app_access_token=app_token or "", tenant_key=tenant_key or ""
        )

    def _post(self, kind: TokenKind, **values: str) -> tuple[str, float]:
        endpoint = endpoint_for(self._app.app_type, kind)
        values.update(app_id=self._app.app_id, app_secret=self._app.app_secret)
        # The table says which of the values this endpoint takes.
        body = {name: values[name] for name in endpoint.request_fields}
        url = self._app.base_url + endpoint.path
        response = self._session.post(url, json=body, headers=_HEADERS, timeout=self._timeout)
        data = response.json()
        if rule_for(data.get(CODE_FIELD)) is not Rule.OK:
            raise FeishuError(kind, data.get(CODE_FIELD), data.get(MSG_FIELD))
        return str(data[endpoint.token_field]), float(data[EXPIRE_FIELD])

    def close(self) -> None:
        self._session.close()


# A cached token: (token, serve_until). Immutable, so a lock-free reader sees old or new, whole.
_Cached = tuple[str, float]


class _DictCache:
    """The dict cache both lock baselines share; every method here runs under their lock."""

    def __init__(self, fetcher: FeishuFetcher, *, safety_margin: float, marketplace: bool) -> None:
        self._fetcher = fetcher
        self._margin = safety_margin
        self._marketplace = marketplace
        self._tokens: dict[str | None, _Cached] = {}
        self._app_token: _Cached | None = None
        self.fetches = 0

    def lookup(self, tenant_key: str | None) -> str | None:
        cached = self._tokens.get(tenant_key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        return None

    def get_or_fetch(self, tenant_key: str | None) -> str:
        token = self.lookup(tenant_key)
        if token is not None:
            return token
        app_token = self._valid_app_token() if self._marketplace else None
        started = time.monotonic()
        try:
            token, expire = self._fetcher.tenant_token(tenant_key, app_token)
        except FeishuError as exc:
            if not self._marketplace or exc.code not in TOKEN_INVALID_CODES:
                raise
            # The app token expired on the way (docs/feishu-protocol.md: drop it, refetch once).
            self._app_token = None
            app_token = self._valid_app_token()
            started = time.monotonic()
            token, expire = self._fetcher.tenant_token(tenant_key, app_token)
        self.fetches += 1
        self._tokens[tenant_key] = (token, started + expire - self._margin)
        return token

    def _valid_app_token(self) -> str:
        cached = self._app_token
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        started = time.monotonic()
        token, expire = self._fetcher.app_token()
        self.fetches += 1
        self._app_token = (token, started + expire - self._margin)
        return token


class _LockedBaseline:
    """What both seed designs share: a dict cache, a fetcher, and one lock."""

    def __init__(
        self,
        app: AppConfig,
        *,
        app_ticket: str | None = None,
        safety_margin: float = 180.0,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self._fetcher = FeishuFetcher(app, app_ticket=app_ticket, timeout=timeout, session=session)
        self._cache = _DictCache(
            self._fetcher,
            safety_margin=safety_margin,
            marketplace=app.app_type is AppType.MARKETPLACE,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._fetcher.close()


class MutexBaseline(_LockedBaseline):
    """One global lock held across the HTTP fetch; a miss fetches inside it."""

    def get(self, tenant_key: str | None = None) -> str:
        with self._lock:
            return self._cache.get_or_fetch(tenant_key)


class DoubleCheckedBaseline(_LockedBaseline):
    """Lock-free read path; a miss takes the write lock, re-checks, and fetches holding it."""

    def get(self, tenant_key: str | None = None) -> str:
        token = self._cache.lookup(tenant_key)  # first check: no lock
        if token is not None:
            return token
        with self._lock:  # the write lock
            return self._cache.get_or_fetch(tenant_key)  # second check, then fetch holding it


class Oracle:
    """Pays nothing for tokens."""

    TOKEN = "t-oracle"

    def get(self, tenant_key: str | None = None) -> str:
        return self.TOKEN

    def close(self) -> None:
        return None


class _Echo(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return Oracle.TOKEN


class PykkaAskFloor:
    """A bare ``ActorRef.ask`` round trip to an actor that answers a constant."""

    def __init__(self) -> None:
        self._ref: pykka.ActorRef[Any] = _Echo.start()
        self._message = object()

    def get(self, tenant_key: str | None = None) -> str:
        return str(self._ref.ask(self._message, timeout=30.0))

    def close(self) -> None:
        self._ref.stop(block=True, timeout=5.0)


def lark_oapi_available() -> str | None:
    """lark-oapi's version if it can be imported, else None (it is an optional dependency)."""
    try:
        from importlib.metadata import version

        import lark_oapi.core.token.manager  # noqa: F401 - the import is the check
    except Exception:
        return None
    try:
        return version("lark-oapi")
    except Exception:
        return "unknown"


class _LarkOapiPeer:
    """lark-oapi's TokenManager for a self-built app, pointed at ``base_url``.

    ``Config.domain`` is the SDK's documented way to target another domain (Lark, a proxy); the
    SDK builds every URL as ``domain + uri``. The cache is the SDK's process-global LocalCache,
    keyed by app_id only (no domain), so each run uses an app_id of its own.
    """

    def __init__(self, app: AppConfig) -> None:
        from lark_oapi.core.model import Config
        from lark_oapi.core.token.manager import TokenManager

        conf = Config()
        conf.app_id = app.app_id
        conf.app_secret = app.app_secret
        conf.domain = app.base_url
        self._conf = conf
        self._fetch: Callable[[Any], str] = TokenManager.get_self_tenant_token

    def get(self, tenant_key: str | None = None) -> str:
        return self._fetch(self._conf)

    def close(self) -> None:
        return None


def lark_oapi_peer(app: AppConfig) -> TokenSource:
    return _LarkOapiPeer(app)


def _plain_resolved_future(value: str) -> pykka.Future[str]:
    future: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    future.set(value)
    return future


def _cheapest_resolved_future() -> Callable[[str], pykka.Future[str]]:
    """The project's own constructor of already-resolved futures if it has one (it skips the
    ``threading.Condition`` a ThreadingFuture creates), else a plain ThreadingFuture."""
    try:
        from actors._messages import resolved_future
    except ImportError:
        return _plain_resolved_future
    return cast("Callable[[str], pykka.Future[str]]", resolved_future)


class ResolvedFutureFloor:
    """A lock-free dict read of an already-resolved pykka future, then its ``get``.

    The least a hit can cost while keeping the futures API: like the project's fast read path,
    one resolved future is made per cached token (with the project's own constructor) and
    handed out on every hit, and the entry's validity is checked against the clock; without
    the project's key resolution, hit counting and sampled timing. A key seen for the first
    time is "fetched" for free (the oracle's constant).
    """

    def __init__(self) -> None:
        self._tokens: dict[str | None, tuple[pykka.Future[str], float]] = {}
        self._resolved = _cheapest_resolved_future()

    def get(self, tenant_key: str | None = None) -> str:
        cached = self._tokens.get(tenant_key)
        if cached is None or time.monotonic() >= cached[1]:
            cached = (self._resolved(Oracle.TOKEN), float("inf"))
            self._tokens[tenant_key] = cached
        return cached[0].get(timeout=30.0)

    def close(self) -> None:
        return None
