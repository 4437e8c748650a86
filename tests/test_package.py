"""The package's public surface and what importing it pulls in."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import actors
from actors import TokenProxy, TokenSystem

# Every public name a user can import, by module: adding or removing one is an API change, so it
# changes this list too.
PUBLIC_SURFACE = [
    "actors.AppConfig",
    "actors.AppTicketError",
    "actors.AppType",
    "actors.AsyncFeishuAuth",
    "actors.AuthError",
    "actors.AuthorizationCodeError",
    "actors.Clock",
    "actors.EventError",
    "actors.FEISHU",
    "actors.FeishuAuth",
    "actors.GetToken",
    "actors.Grant",
    "actors.GrantExpiring",
    "actors.KindMetrics",
    "actors.LARK",
    "actors.LatencySummary",
    "actors.ManualClock",
    "actors.RateLimitedError",
    "actors.ReauthorizationNeeded",
    "actors.ReauthorizationRequired",
    "actors.RedisStore",
    "actors.RefreshFailed",
    "actors.RefreshPolicy",
    "actors.SqliteStore",
    "actors.StoreHealth",
    "actors.StoreKeyError",
    "actors.StoreUnavailableError",
    "actors.SystemClock",
    "actors.SystemHealth",
    "actors.SystemStoppedError",
    "actors.TOKEN_INVALID_CODES",
    "actors.TokenActor",
    "actors.TokenError",
    "actors.TokenKind",
    "actors.TokenMetrics",
    "actors.TokenProxy",
    "actors.TokenRefreshed",
    "actors.TokenReply",
    "actors.TokenRequest",
    "actors.TokenSource",
    "actors.TokenSystem",
    "actors.UpstreamError",
    "actors.UserGrant",
    "actors.callbacks.EventError",
    "actors.callbacks.handle_event",
    "actors.handle_event",
    "actors.httpx.AsyncFeishuAuth",
    "actors.httpx.FeishuAuth",
    "actors.is_token_invalid",
    "actors.jsapi_signature",
    "actors.lark.acall",
    "actors.lark.call",
    "actors.lark.lark_client",
    "actors.pkce_pair",
    "actors.prometheus.TokenMetricsCollector",
    "actors.prometheus.serve_metrics",
    "actors.requests.FeishuAuth",
    "actors.sim.HourStats",
    "actors.sim.SimulationConfig",
    "actors.sim.SimulationReport",
    "actors.sim.parse_outage",
    "actors.sim.run_simulation",
    "actors.testing.EventPusher",
    "actors.testing.FakeFeishu",
    "actors.testing.FakeFeishuProcess",
    "actors.testing.FunctionSource",
    "actors.testing.Gate",
    "actors.testing.Push",
    "actors.testing.RecordedRequest",
    "actors.testing.Redemption",
    "actors.testing.Reply",
    "actors.testing.app_ticket_event",
    "actors.testing.assertion_provider",
    "actors.testing.encrypt_event",
    "actors.testing.oauth_error",
    "actors.testing.sign_event",
    "actors.testing.store_available",
    "actors.testing.wait_listening",
]

PUBLIC_MODULES = [
    "actors",
    "actors.callbacks",
    "actors.httpx",
    "actors.lark",
    "actors.prometheus",
    "actors.requests",
    "actors.sim",
    "actors.testing",
]

# The parameters that may be given by position: the subject of each call. Everything else is an
# option, keyword-only.
POSITIONAL = {
    "TokenSystem.start": ["app_or_apps"],
    "TokenSystem.subscribe": ["subscriber"],
    "TokenProxy.get_token": ["kind"],
    "TokenProxy.aget_token": ["kind"],
    "TokenProxy.set_app_ticket": ["ticket"],
    "TokenProxy.aset_app_ticket": ["ticket"],
    "TokenProxy.invalidate": ["token"],
    "TokenProxy.ainvalidate": ["token"],
    "TokenProxy.redeem_code": ["code"],
    "TokenProxy.aredeem_code": ["code"],
    "TokenProxy.forget_user": ["user"],
    "TokenProxy.aforget_user": ["user"],
    "TokenSystem.authorize_url": ["redirect_uri"],
    "TokenSystem.jsapi_config": ["url"],
    "TokenProxy.jsapi_config": ["url"],
    "TokenProxy.ajsapi_config": ["url"],
}


def test_the_public_surface_is_exactly_the_names_listed() -> None:
    surface = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        names = module.__all__
        assert sorted(names) == sorted(set(names)), f"{name}.__all__ names one twice"
        for public in names:
            assert hasattr(module, public), f"{name}.{public}"
        surface += [f"{name}.{public}" for public in names]
    assert sorted(surface) == PUBLIC_SURFACE


def test_options_of_the_system_and_its_proxy_are_keyword_only() -> None:
    positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for cls in (TokenSystem, TokenProxy):
        for name, member in vars(cls).items():
            function = member.__func__ if isinstance(member, classmethod) else member
            if name.startswith("_") or not inspect.isfunction(function):
                continue
            parameters = list(inspect.signature(function).parameters.values())[1:]
            positional = [p.name for p in parameters if p.kind in positional_kinds]
            assert positional == POSITIONAL.get(f"{cls.__name__}.{name}", []), name


def test_the_proxy_has_a_coroutine_for_every_future() -> None:
    methods = {n for n, v in vars(TokenProxy).items() if inspect.isfunction(v) and n[0] != "_"}
    sync = {n for n in methods if not inspect.iscoroutinefunction(vars(TokenProxy)[n])}
    assert {f"a{n}" for n in sync} == methods - sync


def test_internals_stay_out_of_the_package_namespace() -> None:
    # Internals stay internal: the scheduler's actor speaks private messages, keys are ours.
    assert "SchedulerActor" not in actors.__all__
    assert "TokenKey" not in actors.__all__


def test_the_token_source_seam_is_public() -> None:
    assert {"TokenSource", "TokenRequest", "Grant"} <= set(actors.__all__)


def test_runtime_modules_do_not_import_test_support() -> None:
    code = (
        "import sys, actors, actors.cli._main, actors.sim, actors.prometheus; "
        "print(sorted(m for m in sys.modules if m.startswith('actors.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
