"""User grants through a running system, without a store: login, rotation, keep-alive, the
refusals that end a grant and the failures that must not (the fake Feishu over loopback HTTP, on
the suite's ManualClock)."""

from __future__ import annotations

import threading

import pytest

import actors
from actors.testing import FakeFeishu, Reply, oauth_error
from tests.conftest import APP_ID, SECRET, SystemFactory
from tests.users.conftest import DAY, REDIRECT, TIMEOUT, login

USER = actors.TokenKind.USER


def user_token(system: actors.TokenSystem, user: str = "ou_alice") -> str:
    return system.proxy.get_token(USER, user=user).get(timeout=TIMEOUT)


def run_for(system: actors.TokenSystem, clock: actors.ManualClock, seconds: float) -> None:
    """Let the system do what falls due within ``seconds`` of virtual time, in its order."""
    end = clock.now() + seconds
    system.settle()
    while (due := system.next_due()) is not None and due <= end:
        clock.advance(max(0.0, due - clock.now()))
        system.settle()
    clock.advance(max(0.0, end - clock.now()))
    system.settle()


def test_a_login_caches_the_users_token_and_gets_are_served_without_another_request(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)
    grant = login(system, server)
    assert (grant.app_id, grant.open_id, grant.scope) == (APP_ID, "ou_alice", ("offline_access",))
    assert grant.refresh_expires_at is not None and grant.refresh_expires_at > grant.expires_at
    before = server.count("user")
    tokens = {user_token(system) for _ in range(20)}
    assert len(tokens) == 1
    assert server.count("user") == before
    assert "ou_alice" in repr(grant) and tokens.pop() not in repr(grant)


def test_the_grant_is_rotated_before_expiry_and_every_refresh_token_is_redeemed_once(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    login(system, server)
    seen = {user_token(system)}
    for _ in range(6):
        run_for(system, clock, 7200.0 - 300.0)
        seen.add(user_token(system))  # read, so the prewarm keeps going
    assert server.oauth.rotations("ou_alice") >= 5
    assert len(seen) >= 5
    assert server.oauth.refresh_reuses == 0
    assert server.oauth.grant_alive("ou_alice", app_id=APP_ID)


def test_concurrent_gets_after_an_invalidation_share_one_rotation(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, fast_reads=False)
    login(system, server)
    old = user_token(system)
    assert system.proxy.invalidate(old).get(timeout=TIMEOUT) is True
    futures = [system.proxy.get_token(USER, user="ou_alice") for _ in range(32)]
    tokens = {f.get(timeout=TIMEOUT) for f in futures}
    assert len(tokens) == 1 and old not in tokens
    assert server.oauth.rotations("ou_alice") == 1
    assert server.oauth.refresh_reuses == 0


def test_an_idle_user_is_kept_logged_in_by_the_keep_alive_rotation(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    login(system, server)
    run_for(system, clock, 6.5 * DAY)  # nobody reads the token meanwhile
    assert server.oauth.rotations("ou_alice") >= 1
    assert server.oauth.grant_alive("ou_alice", app_id=APP_ID)
    run_for(system, clock, 2 * DAY)  # 8.5 days: a week-long refresh token would be dead
    assert user_token(system)
    assert server.oauth.refresh_reuses == 0


def test_a_revoked_grant_fails_every_waiter_with_reauthorization_required_and_one_event(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, fast_reads=False)
    events: list[object] = []
    published = threading.Event()

    def hear(event: object) -> None:
        if isinstance(event, actors.ReauthorizationNeeded):
            events.append(event)
            published.set()

    system.subscribe(hear)
    login(system, server)
    server.oauth.revoke("ou_alice")
    system.proxy.invalidate(user_token(system)).get(timeout=TIMEOUT)
    futures = [system.proxy.get_token(USER, user="ou_alice") for _ in range(8)]
    for future in futures:
        with pytest.raises(actors.ReauthorizationRequired) as caught:
            future.get(timeout=TIMEOUT)
        assert (caught.value.reason, caught.value.user) == ("revoked", "ou_alice")
    with pytest.raises(actors.ReauthorizationRequired, match="revoked"):
        user_token(system)  # asked again: the same answer, and Feishu is not asked again
    system.settle()
    assert published.wait(TIMEOUT)
    assert events == [actors.ReauthorizationNeeded(APP_ID, "ou_alice", "revoked")]
    assert server.oauth.refresh_reuses == 0


def test_a_server_error_is_retried_and_the_grant_is_kept(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
) -> None:
    system = make_system(app, retry_base=0.0, max_attempts=5)
    login(system, server)
    server.script("user", oauth_error(20050), oauth_error(20050))
    system.proxy.invalidate(user_token(system)).get(timeout=TIMEOUT)
    assert user_token(system)
    assert server.oauth.rotations("ou_alice") == 1
    assert server.oauth.grant_alive("ou_alice", app_id=APP_ID)


def test_a_lost_answer_makes_the_next_refusal_interrupted_not_a_loop(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app, retry_base=0.0, max_attempts=3)
    login(system, server)
    server.oauth.lose_answer(Reply.disconnect(), user="ou_alice")
    system.proxy.invalidate(user_token(system)).get(timeout=TIMEOUT)
    with pytest.raises(actors.ReauthorizationRequired) as caught:
        user_token(system)
    assert caught.value.reason == "interrupted"
    assert server.oauth.refresh_reuses == 1  # the one redemption that showed the loss


def test_a_user_without_a_grant_is_an_unknown_user(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(actors.ReauthorizationRequired) as caught:
        user_token(system, "ou_nobody")
    assert caught.value.reason == "unknown_user"


def test_forget_user_logs_the_user_out(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)
    login(system, server)
    assert [g.open_id for g in system.users()] == ["ou_alice"]
    assert system.proxy.forget_user("ou_alice").get(timeout=TIMEOUT) is True
    with pytest.raises(actors.ReauthorizationRequired, match="no grant is stored"):
        user_token(system)
    assert system.users() == []
    assert system.proxy.forget_user("ou_alice").get(timeout=TIMEOUT) is False


def test_a_grant_without_offline_access_ends_with_its_access_token(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    server.oauth.configure(APP_ID, offline_access=False)
    grant = login(system, server, scope=())
    assert grant.refresh_expires_at is None
    assert user_token(system)
    run_for(system, clock, 7200.0)
    with pytest.raises(actors.ReauthorizationRequired) as caught:
        user_token(system)
    assert caught.value.reason == "no_refresh_token"


def test_a_refused_code_is_an_authorization_code_error(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    system = make_system(app)
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
    with pytest.raises(actors.AuthorizationCodeError) as caught:
        system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
    assert caught.value.code == 20065
    assert code not in str(caught.value)


def test_user_is_required_for_user_tokens_and_refused_for_the_others(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    with pytest.raises(ValueError, match="user="):
        system.proxy.get_token(USER).get(timeout=TIMEOUT)
    with pytest.raises(ValueError, match=r"only accepted for TokenKind\.USER"):
        system.proxy.get_token(actors.TokenKind.TENANT, user="ou_alice").get(timeout=TIMEOUT)


def test_the_first_login_without_a_store_warns_that_grants_live_in_memory(
    make_system: SystemFactory, app: actors.AppConfig, server: FakeFeishu
) -> None:
    from loguru import logger

    lines: list[str] = []
    logger.enable("actors")
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        system = make_system(app)
        login(system, server)
        login(system, server, "ou_bob")
    finally:
        logger.remove(sink)
        logger.disable("actors")
    assert sum("kept in memory only" in line for line in lines) == 1


def test_authorize_url_goes_to_the_apps_accounts_host_and_always_asks_for_offline_access(
    make_system: SystemFactory, app: actors.AppConfig
) -> None:
    system = make_system(app)
    verifier, challenge = actors.pkce_pair()
    url = system.authorize_url(
        REDIRECT, state="xyz", scope=["calendar:calendar:readonly"], code_challenge=challenge
    )
    assert url.startswith(app.base_url + "/open-apis/authen/v1/authorize?")
    assert "offline_access" in url and "calendar%3Acalendar%3Areadonly" in url
    assert "code_challenge_method=S256" in url and verifier not in url
    feishu = actors.AppConfig("cli_x", "secret")
    lark = actors.AppConfig("cli_x", "secret", base_url=actors.LARK)
    with actors.TokenSystem.start([feishu]) as real:
        assert real.authorize_url(REDIRECT, state="s").startswith(
            "https://accounts.feishu.cn/open-apis/authen/v1/authorize?"
        )
    with actors.TokenSystem.start([lark]) as real:
        assert real.authorize_url(REDIRECT, state="s").startswith(
            "https://accounts.larksuite.com/open-apis/authen/v1/authorize?"
        )


def test_an_app_may_redeem_user_tokens_on_the_v2_endpoint(
    make_system: SystemFactory, server: FakeFeishu
) -> None:
    app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url, user_token_endpoint="v2")
    system = make_system(app)
    login(system, server)
    system.proxy.invalidate(user_token(system)).get(timeout=TIMEOUT)
    assert user_token(system)
    paths = {r.path for r in server.oauth.redemptions}
    assert paths == {"/open-apis/authen/v2/oauth/token"}
    assert "user_token_endpoint='v2'" in repr(app)
    with pytest.raises(ValueError, match="user_token_endpoint"):
        actors.AppConfig(APP_ID, SECRET, user_token_endpoint="v1")


def test_a_grant_nearing_the_365_day_limit_is_announced_once_ahead_of_it(
    make_system: SystemFactory,
    app: actors.AppConfig,
    server: FakeFeishu,
    clock: actors.ManualClock,
) -> None:
    system = make_system(app)
    heard: list[actors.GrantExpiring] = []
    system.subscribe(lambda e: heard.append(e) if isinstance(e, actors.GrantExpiring) else None)
    grant = login(system, server)
    run_for(system, clock, 357 * DAY)  # kept alive all along, nobody reading
    assert heard == []
    # The first rotation within the week before the limit tells (keep-alive rotates weekly).
    run_for(system, clock, 5 * DAY)
    assert len(heard) == 1
    assert (heard[0].app_id, heard[0].user) == (APP_ID, "ou_alice")
    assert heard[0].reauthorize_by == pytest.approx(grant.reauthorize_by, abs=1.0)
    run_for(system, clock, 2 * DAY)
    assert len(heard) == 1
