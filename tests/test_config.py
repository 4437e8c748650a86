"""AppConfig, RefreshPolicy and key resolution: bad input is rejected at construction."""

from __future__ import annotations

import random
from urllib.parse import urlsplit

import pytest
import requests

import actors
from actors._config import resolve_key


def test_app_config_repr_masks_the_secret() -> None:
    app = actors.AppConfig("cli_1", "very-secret-value")
    assert "very-secret-value" not in repr(app)
    assert "very-secret-value" not in str(app)
    assert "cli_1" in repr(app)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"app_id": "", "app_secret": "s"}, "app_id"),
        ({"app_id": "   ", "app_secret": "s"}, "app_id"),
        ({"app_id": "cli", "app_secret": ""}, "app_secret"),
        ({"app_id": "cli", "app_secret": "s", "base_url": "ftp://x"}, "base_url"),
        ({"app_id": "cli", "app_secret": "s", "base_url": "not a url"}, "base_url"),
        ({"app_id": "cli", "app_secret": "s", "app_type": "bogus"}, "app_type"),
    ],
)
def test_invalid_app_config_raises_value_error_naming_the_field(
    kwargs: dict[str, str], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        actors.AppConfig(**kwargs)  # type: ignore[arg-type]


def test_base_url_trailing_slash_is_normalised_so_keys_match() -> None:
    a = actors.AppConfig("cli", "s", base_url="https://open.feishu.cn/")
    b = actors.AppConfig("cli", "s")
    assert a.key(actors.TokenKind.TENANT) == b.key(actors.TokenKind.TENANT)


def test_keys_differ_by_domain_app_kind_and_tenant() -> None:
    feishu = actors.AppConfig("cli", "s")
    lark = actors.AppConfig("cli", "s", base_url=actors.LARK)
    keys = {
        feishu.key(actors.TokenKind.TENANT),
        lark.key(actors.TokenKind.TENANT),
        feishu.key(actors.TokenKind.APP),
        feishu.key(actors.TokenKind.TENANT, "t1"),
        feishu.key(actors.TokenKind.TENANT, "t2"),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prewarm_lead": 1800.0}, "prewarm_lead"),
        ({"prewarm_lead": 100.0, "safety_margin": 200.0}, "prewarm_lead"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_concurrent_fetches": 0}, "max_concurrent_fetches"),
        ({"request_timeout": (1.0,)}, "request_timeout"),
        ({"request_timeout": (0, 5)}, "request_timeout"),
        ({"retry_base": -1}, "retry_base"),
        # NaN slips through every range check and infinity makes timers that never fire.
        ({"retry_cap": float("nan")}, "retry_cap"),
        ({"safety_margin": float("nan")}, "safety_margin"),
        ({"retry_base": float("inf")}, "retry_base"),
        ({"ticket_wait": float("inf")}, "ticket_wait"),
        ({"idle_ttl": float("nan")}, "idle_ttl"),
        ({"jitter": float("nan")}, "jitter"),
        ({"prewarm_lead": float("nan")}, "prewarm_lead"),
        ({"report_interval": float("inf")}, "report_interval"),
        ({"request_timeout": (float("inf"), float("inf"))}, "request_timeout"),
        ({"request_timeout": (3.0, float("nan"))}, "request_timeout"),
        ({"request_timeout": (-1.0, 5.0)}, "request_timeout"),
    ],
)
def test_invalid_policy_raises_value_error_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        actors.RefreshPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_is_full_jitter_capped_and_honours_retry_after() -> None:
    policy = actors.RefreshPolicy(retry_base=1.0, retry_cap=8.0)
    rng = random.Random(1)
    for attempt in range(1, 10):
        for _ in range(50):
            delay = policy.backoff(attempt, rng)
            assert 0 <= delay <= min(8.0, 2 ** (attempt - 1))
    assert policy.backoff(1, rng, retry_after=5.0) >= 5.0


def test_prewarm_due_lies_in_the_jitter_band_before_expiry() -> None:
    policy = actors.RefreshPolicy(prewarm_lead=600.0, jitter=0.1, safety_margin=180.0)
    rng = random.Random(3)
    dues = [
        policy.prewarm_due(10_000.0, serve_until=9_820.0, now=2_800.0, rng=rng) for _ in range(200)
    ]
    assert all(10_000 - 660 <= d <= 10_000 - 540 for d in dues)
    assert len({round(d) for d in dues}) > 50  # spread, not lockstep


def test_prewarm_due_is_never_earlier_than_halfway_to_the_hard_deadline() -> None:
    policy = actors.RefreshPolicy(prewarm_lead=600.0, safety_margin=180.0)
    # A token with only 400 s left would be "due" in the past; it must wait half its margin.
    due = policy.prewarm_due(1_400.0, serve_until=1_220.0, now=1_000.0, rng=random.Random(0))
    assert due == pytest.approx(1_000.0 + (1_400.0 - 180.0 - 1_000.0) / 2)


def test_resolve_key_rules() -> None:
    own = actors.AppConfig("cli_own", "s")
    market = actors.AppConfig("cli_mk", "s", app_type=actors.AppType.MARKETPLACE)
    one = {"cli_own": own}
    both = {"cli_own": own, "cli_mk": market}
    assert resolve_key(one, "tenant", None, None) == own.key(actors.TokenKind.TENANT)
    assert resolve_key(both, "tenant", "tk", "cli_mk") == market.key(actors.TokenKind.TENANT, "tk")
    with pytest.raises(ValueError, match="app_id is required"):
        resolve_key(both, "tenant", None, None)
    with pytest.raises(ValueError, match="unknown app_id"):
        resolve_key(one, "tenant", None, "cli_nope")
    with pytest.raises(ValueError, match="tenant_key is not accepted"):
        resolve_key(one, "tenant", "tk", None)
    with pytest.raises(ValueError, match="tenant_key is required"):
        resolve_key(both, "tenant", None, "cli_mk")
    with pytest.raises(ValueError, match="kind"):
        resolve_key(one, "bogus", None, None)
    with pytest.raises(ValueError, match=r"user= .* is required"):
        resolve_key(one, "user", None, None)
    with pytest.raises(ValueError, match=r"only accepted for TokenKind\.USER"):
        resolve_key(one, "tenant", None, None, "ou_1")
    with pytest.raises(ValueError, match="tenant_key is not accepted for a user token"):
        resolve_key(one, "user", "tk", None, "ou_1")
    assert resolve_key(one, "user", None, None, "ou_1") == own.key(
        actors.TokenKind.USER, user="ou_1"
    )


def test_plain_http_is_refused_except_on_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        actors.AppConfig("cli_x", "s", base_url="http://open.feishu.cn")
    for url in (
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
        "http://127.9.9.9",
    ):
        assert actors.AppConfig("cli_x", "s", base_url=url).base_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # urllib reads host 127.0.0.1 (user "evil.example\\"); urllib3 sends to evil.example.
        ("http://evil.example\\@127.0.0.1", "user info"),
        ("http://127.0.0.1\\@evil.example", "user info"),
        ("https://open.feishu.cn\\.evil.example", "backslash"),
        ("http://evil.example;@127.0.0.1", "user info"),
        ("https://user:hunter2@open.feishu.cn", "user info"),
        ("http://evil.example#@127.0.0.1", "user info"),
        ("https://open.feishu.cn#top", "fragment"),
        ("https://open.feishu.cn?x=1", "query"),
        ("http://127.0.0.1\t.evil.example", "not allowed"),  # urllib drops the tab
        ("http://127.0.0.1\n.evil.example", "not allowed"),
        ("https://open.feishu.cn /x", "not allowed"),
        ("https://ｅvil.example", "not allowed"),  # full-width: NFKC-normalised by IDNA
        ("http://127.0.0.1%2f.evil.example", "valid host"),
        ("https://open.feishu.cn/%zz", "escape"),
        ("https://open.feishu.cn:99999", "valid host and port"),
        ("https://open.feishu.cn:0", "valid host and port"),
        ("https://open.feishu.cn:/x", "valid host and port"),
        ("https://[::1", "valid host and port"),
        ("https:open.feishu.cn", "valid host and port"),
        ("https://open.feishu.cn/a/../b", "read differently"),  # urllib3 removes dot segments
    ],
)
def test_a_base_url_the_parsers_could_read_differently_is_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="base_url") as info:
        actors.AppConfig("cli_x", "s", base_url=url)
    assert reason in str(info.value)
    assert "hunter2" not in str(info.value)  # a credential in the URL is not repeated


@pytest.mark.parametrize(
    "url",
    [
        "https://open.feishu.cn",
        "https://open.larksuite.com:443",
        "https://gateway.example/feishu-proxy",
        "http://127.0.0.1:8080",
        "http://[::1]:9",
        "http://localhost:1",
        "HTTPS://OPEN.FEISHU.CN",
    ],
)
def test_an_accepted_base_url_is_the_host_requests_sends_to(url: str) -> None:
    app = actors.AppConfig("cli_x", "s", base_url=url)
    sent = requests.Request("POST", app.base_url + "/open-apis/auth").prepare()
    assert urlsplit(sent.url or "").hostname == urlsplit(url).hostname


def test_from_env_reads_the_app_and_its_options() -> None:
    env = {
        "FEISHU_APP_ID": "cli_env",
        "FEISHU_APP_SECRET": "env-secret",
        "FEISHU_APP_TYPE": "marketplace",
        "FEISHU_BASE_URL": actors.LARK,
    }
    app = actors.AppConfig.from_env(environ=env)
    assert (app.app_id, app.app_secret, app.app_type, app.base_url) == (
        "cli_env",
        "env-secret",
        actors.AppType.MARKETPLACE,
        actors.LARK,
    )
    other = actors.AppConfig.from_env(
        "LARK_", environ={"LARK_APP_ID": "cli_2", "LARK_APP_SECRET": "s2"}
    )
    assert (other.app_type, other.base_url) == (actors.AppType.SELF_BUILT, actors.FEISHU)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FEISHU_APP_SECRET": "s"}, "FEISHU_APP_ID"),
        ({"FEISHU_APP_ID": "cli_x", "FEISHU_APP_SECRET": "  "}, "FEISHU_APP_SECRET"),
        ({"FEISHU_APP_ID": "cli_x", "FEISHU_APP_SECRET": "s", "FEISHU_APP_TYPE": "x"}, "APP_TYPE"),
        (
            {"FEISHU_APP_ID": "cli_x", "FEISHU_APP_SECRET": "s", "FEISHU_BASE_URL": "http://a.b"},
            "FEISHU_BASE_URL",
        ),
        (
            {"FEISHU_APP_ID": "cli_x", "FEISHU_APP_SECRET": "s", "FEISHU_BASE_URL": "nonsense"},
            "FEISHU_BASE_URL",
        ),
    ],
)
def test_from_env_names_the_missing_or_malformed_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ValueError, match=variable) as info:
        actors.AppConfig.from_env(environ=env)
    assert "s3cr3t" not in str(info.value)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEISHU_APP_ID", "cli_os")
    monkeypatch.setenv("FEISHU_APP_SECRET", "os-secret")
    assert actors.AppConfig.from_env().app_id == "cli_os"
