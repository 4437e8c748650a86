"""lark-token-actors: Feishu/Lark access tokens from an actor-owned cache.

One TokenActor owns the cache (no locks), concurrent misses share one upstream request and a
scheduler actor prewarms tokens before they expire. ``TokenSystem.start(...)`` starts it;
``system.proxy`` (a :class:`TokenProxy`) is the token API: its plain methods return pykka futures,
its ``a``-prefixed methods are coroutines that return values.
"""

import importlib
from typing import TYPE_CHECKING

from loguru import logger

from actors._auth import TOKEN_INVALID_CODES as TOKEN_INVALID_CODES
from actors._auth import is_token_invalid as is_token_invalid
from actors._clock import Clock as Clock
from actors._clock import ManualClock as ManualClock
from actors._clock import SystemClock as SystemClock
from actors._config import FEISHU as FEISHU
from actors._config import LARK as LARK
from actors._config import AppConfig as AppConfig
from actors._config import AppType as AppType
from actors._config import RefreshPolicy as RefreshPolicy
from actors._config import TokenKind as TokenKind
from actors._errors import AppTicketError as AppTicketError
from actors._errors import AuthError as AuthError
from actors._errors import AuthorizationCodeError as AuthorizationCodeError
from actors._errors import RateLimitedError as RateLimitedError
from actors._errors import ReauthorizationRequired as ReauthorizationRequired
from actors._errors import StoreKeyError as StoreKeyError
from actors._errors import SystemStoppedError as SystemStoppedError
from actors._errors import TokenError as TokenError
from actors._errors import UpstreamError as UpstreamError
from actors._events import GrantExpiring as GrantExpiring
from actors._events import ReauthorizationNeeded as ReauthorizationNeeded
from actors._events import RefreshFailed as RefreshFailed
from actors._events import TokenRefreshed as TokenRefreshed
from actors._messages import GetToken as GetToken
from actors._messages import TokenReply as TokenReply
from actors._metrics import KindMetrics as KindMetrics
from actors._metrics import LatencySummary as LatencySummary
from actors._metrics import TokenMetrics as TokenMetrics
from actors._proxy import TokenProxy as TokenProxy
from actors._refresh import SystemHealth as SystemHealth
from actors._source import Grant as Grant
from actors._source import TokenRequest as TokenRequest
from actors._source import TokenSource as TokenSource
from actors._system import StoreUnavailableError as StoreUnavailableError
from actors._system import TokenSystem as TokenSystem
from actors._token_actor import TokenActor as TokenActor
from actors.callbacks import EventError as EventError
from actors.callbacks import handle_event as handle_event
from actors.feishu._jssdk import jsapi_signature as jsapi_signature
from actors.requests import FeishuAuth as FeishuAuth
from actors.stores import SqliteStore as SqliteStore
from actors.stores import StoreHealth as StoreHealth
from actors.users import UserGrant as UserGrant
from actors.users import pkce_pair as pkce_pair

if TYPE_CHECKING:
    from actors.httpx import AsyncFeishuAuth as AsyncFeishuAuth
    from actors.stores import RedisStore as RedisStore

__all__ = [
    "FEISHU",
    "LARK",
    "TOKEN_INVALID_CODES",
    "AppConfig",
    "AppTicketError",
    "AppType",
    "AsyncFeishuAuth",
    "AuthError",
    "AuthorizationCodeError",
    "Clock",
    "EventError",
    "FeishuAuth",
    "GetToken",
    "Grant",
    "GrantExpiring",
    "KindMetrics",
    "LatencySummary",
    "ManualClock",
    "RateLimitedError",
    "ReauthorizationNeeded",
    "ReauthorizationRequired",
    "RedisStore",
    "RefreshFailed",
    "RefreshPolicy",
    "SqliteStore",
    "StoreHealth",
    "StoreKeyError",
    "StoreUnavailableError",
    "SystemClock",
    "SystemHealth",
    "SystemStoppedError",
    "TokenActor",
    "TokenError",
    "TokenKind",
    "TokenMetrics",
    "TokenProxy",
    "TokenRefreshed",
    "TokenReply",
    "TokenRequest",
    "TokenSource",
    "TokenSystem",
    "UpstreamError",
    "UserGrant",
    "handle_event",
    "is_token_invalid",
    "jsapi_signature",
    "pkce_pair",
]

__version__ = "0.1.0"


# Optional extras, imported on first use (a type checker sees them through TYPE_CHECKING).
_EXTRAS = {
    "AsyncFeishuAuth": ("actors.httpx", "httpx"),
    "RedisStore": ("actors.stores", "redis"),
}


def __getattr__(name: str) -> object:
    if name in _EXTRAS:
        module, extra = _EXTRAS[name]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            msg = f'{name} needs the {extra} extra: pip install "lark-token-actors[{extra}]"'
            raise ImportError(msg) from exc
    msg = f"module 'actors' has no attribute {name!r}"
    raise AttributeError(msg)


# A library never decides where logs go: the application opts in with logger.enable("actors").
logger.disable("actors")
