"""The OAuth client redeems codes and refresh tokens, learns whose a token is, and classifies
every outcome of one attempt: driven against the fake server over loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import actors
from actors._errors import REAUTHORIZATION_REASONS
from actors.feishu import _protocol as feishu
from actors.feishu._oauth import (
    FeishuOAuth,
    UserTokens,
    accounts_url,
    authorize_endpoint,
    token_endpoint,
)
from actors.testing import FakeFeishu, Reply, oauth_error
from actors.testing import _protocol as fake_protocol
from tests.conftest import APP_ID, SECRET

OTHER_ID, OTHER_SECRET = "cli_other", "0ther-app-secret-value"
ALICE, BOB = "ou_alice", "ou_bob"
REDIRECT = "http://127.0.0.1:8000/callback"
V3, V2 = "/oauth/v3/token", "/open-apis/authen/v2/oauth/token"
DAY = 86400.0


@pytest.fixture
def server(clock: actors.ManualClock) -> Iterator[FakeFeishu]:
    # Lifetimes on the suite's ManualClock; Alice is signed in (added first).
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(APP_ID, SECRET)
        fake.add_app(OTHER_ID, OTHER_SECRET)
        fake.oauth.add_user(ALICE)
        fake.oauth.add_user(BOB)
        yield fake


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(params=["v3", "v2"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def oauth(session: requests.Session, version: str) -> FeishuOAuth:
    return FeishuOAuth(session, timeout=(1.0, 2.0), version=version)


def exchange(
    oauth: FeishuOAuth, app: actors.AppConfig, code: str, verifier: str | None = None
) -> UserTokens:
    return oauth.exchange_code(app, code=code, redirect_uri=REDIRECT, code_verifier=verifier)


def login(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, **issue: Any
) -> UserTokens:
    return exchange(oauth, app, server.oauth.issue_code(app.app_id, REDIRECT, **issue))


def challenge_of(verifier: str) -> str:
    # Written out here rather than taken from the library: RFC 7636 S256.
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def success(**fields: object) -> Reply:
    body: dict[str, object] = {"code": 0, "access_token": "u-" + "a" * 32, "expires_in": 7200}
    body |= {"refresh_token": "ur-" + "b" * 32, "refresh_token_expires_in": 604800}
    body |= {"scope": "offline_access", "token_type": "Bearer"}
    body |= fields
    return Reply.raw(json.dumps({k: v for k, v in body.items() if v is not ...}))


# --- where the endpoints are -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "accounts"),
    [
        (actors.FEISHU, "https://accounts.feishu.cn"),
        (actors.LARK, "https://accounts.larksuite.com"),
        (actors.FEISHU + "/", "https://accounts.feishu.cn"),
        ("https://feishu-proxy.example.com:8443", "https://feishu-proxy.example.com:8443"),
        ("http://127.0.0.1:9999", "http://127.0.0.1:9999"),
    ],
)
def test_the_accounts_host_is_the_domains_and_a_custom_base_url_serves_it_itself(
    base_url: str, accounts: str
) -> None:
    app = actors.AppConfig(APP_ID, SECRET, base_url=base_url)
    assert accounts_url(app) == accounts
    assert authorize_endpoint(app) == accounts + "/open-apis/authen/v1/authorize"
    assert token_endpoint(app) == accounts + "/oauth/v3/token"
    assert token_endpoint(app, version="v2") == app.base_url + V2


def test_only_the_v3_and_v2_token_endpoints_exist(session: requests.Session) -> None:
    app = actors.AppConfig(APP_ID, SECRET)
    with pytest.raises(ValueError, match="'v3' or 'v2'"):
        token_endpoint(app, version="v1")
    with pytest.raises(ValueError, match="'v3' or 'v2'"):
        FeishuOAuth(session, timeout=(1.0, 2.0), version="v4")


# --- code exchange and rotation ----------------------------------------------------------------


def test_a_code_is_exchanged_for_tokens_the_server_accepts_on_the_chosen_endpoint(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, version: str
) -> None:
    tokens = login(server, oauth, app, scope=("offline_access", "calendar:calendar:readonly"))
    assert server.valid_token(tokens.access_token)
    assert (tokens.expires_in, tokens.refresh_expires_in) == (7200.0, 604800.0)
    assert tokens.refresh_token is not None
    assert tokens.scope == ("offline_access", "calendar:calendar:readonly")
    (redemption,) = server.oauth.redemptions
    assert redemption.path == {"v3": V3, "v2": V2}[version]
    assert (redemption.grant_type, redemption.code) == ("authorization_code", 0)


def test_a_refresh_rotates_the_refresh_token_and_the_old_one_is_then_revoked(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    first = login(server, oauth, app)
    assert first.refresh_token is not None
    second = oauth.refresh(app, first.refresh_token, user=ALICE)
    assert second.refresh_token not in (None, first.refresh_token)
    assert second.access_token != first.access_token

    with pytest.raises(actors.ReauthorizationRequired) as info:
        oauth.refresh(app, first.refresh_token, user=ALICE)

    assert (info.value.reason, info.value.code) == ("revoked", 20064)
    assert (info.value.app_id, info.value.user) == (APP_ID, ALICE)
    assert server.oauth.refresh_reuses == 1
    assert second.refresh_token is not None
    assert oauth.refresh(app, second.refresh_token, user=ALICE).refresh_token is not None


def test_v2_and_v3_redeem_each_others_refresh_tokens(
    server: FakeFeishu, session: requests.Session, app: actors.AppConfig
) -> None:
    v3 = FeishuOAuth(session, timeout=(1.0, 2.0))
    v2 = FeishuOAuth(session, timeout=(1.0, 2.0), version="v2")
    tokens = login(server, v3, app)
    assert tokens.refresh_token is not None
    rotated = v2.refresh(app, tokens.refresh_token, user=ALICE)
    assert rotated.refresh_token is not None
    assert v3.refresh(app, rotated.refresh_token, user=ALICE).refresh_token is not None
    assert [r.path for r in server.oauth.redemptions] == [V3, V2, V3]


def test_a_pkce_code_is_exchanged_only_with_its_verifier(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    verifier = secrets.token_urlsafe(48)
    code = server.oauth.issue_code(APP_ID, REDIRECT, code_challenge=challenge_of(verifier))
    with pytest.raises(actors.AuthorizationCodeError) as info:
        exchange(oauth, app, code)
    assert info.value.code == 20049
    # A refusal consumes nothing: the same code, with its verifier, logs the user in.
    tokens = exchange(oauth, app, code, verifier)
    assert server.valid_token(tokens.access_token)


def test_without_offline_access_no_refresh_token_is_issued(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    not_asked = login(server, oauth, app, scope=("calendar:calendar:readonly",))
    server.oauth.configure(APP_ID, offline_access=False)
    not_enabled = login(server, oauth, app)
    for tokens in (not_asked, not_enabled):
        assert (tokens.refresh_token, tokens.refresh_expires_in) == (None, None)
        assert server.valid_token(tokens.access_token)


def test_user_info_names_the_user_the_token_belongs_to(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    alice = login(server, oauth, app)
    bob = login(server, oauth, app, user=BOB)
    assert oauth.user_info(app, alice.access_token) == ALICE
    assert oauth.user_info(app, bob.access_token) == BOB


class RecordingSession(requests.Session):
    """Records what every call would send, and fails it as a network error would."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def post(self, url: str | bytes, data: Any = None, json: Any = None, **kw: Any) -> Any:
        self.seen.append(("POST", str(url), {"data": data, **kw}))
        raise requests.ConnectionError("recorded")

    def get(self, url: str | bytes, **kw: Any) -> Any:
        self.seen.append(("GET", str(url), kw))
        raise requests.ConnectionError("recorded")


def test_every_call_has_the_timeout_follows_no_redirect_and_sends_the_documented_request(
    app: actors.AppConfig,
) -> None:
    session = RecordingSession()
    oauth = FeishuOAuth(session, timeout=(3.05, 10.0))
    calls: list[Callable[[], object]] = [
        lambda: oauth.exchange_code(app, code="c0de", redirect_uri=REDIRECT, code_verifier="v1"),
        lambda: oauth.exchange_code(app, code="c0de", redirect_uri=REDIRECT, code_verifier=None),
        lambda: oauth.refresh(app, "ur-refresh", user=ALICE),
        lambda: oauth.user_info(app, "u-access"),
    ]
    for call in calls:
        with pytest.raises(actors.UpstreamError, match="ConnectionError"):
            call()
    assert [(kw["timeout"], kw["allow_redirects"]) for *_, kw in session.seen] == [
        ((3.05, 10.0), False)
    ] * 4
    bodies = [json.loads(kw["data"]) for method, _, kw in session.seen if method == "POST"]
    client = {"client_id": APP_ID, "client_secret": SECRET}
    code = {"grant_type": "authorization_code", "code": "c0de", "redirect_uri": REDIRECT}
    assert bodies == [
        client | code | {"code_verifier": "v1"},
        client | code,
        client | {"grant_type": "refresh_token", "refresh_token": "ur-refresh"},
    ]
    method, url, kw = session.seen[-1]
    assert (method, url) == ("GET", app.base_url + "/open-apis/authen/v1/user_info")
    assert kw["headers"]["Authorization"] == "Bearer u-access"


# --- refusals of a refresh ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (20064, "revoked"),
        (20073, "revoked"),
        (20037, "expired"),
        (20026, "invalid"),
        (20024, "wrong_app"),
        (20074, "refresh_disabled"),
    ],
)
def test_each_definite_refusal_of_a_refresh_ends_the_grant_with_its_reason(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, code: int, reason: str
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    server.script("user", oauth_error(code))
    with pytest.raises(actors.ReauthorizationRequired) as info:
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    assert (info.value.reason, info.value.code) == (reason, code)
    assert (info.value.app_id, info.value.user) == (APP_ID, ALICE)


Situation = Callable[[FakeFeishu, actors.ManualClock, str], str]


def _never_issued(server: FakeFeishu, clock: actors.ManualClock, token: str) -> str:
    return "ur-" + "0" * 32


def _switched_off(server: FakeFeishu, clock: actors.ManualClock, token: str) -> str:
    server.oauth.configure(APP_ID, refresh_enabled=False)
    return token


def _idle_seven_days(server: FakeFeishu, clock: actors.ManualClock, token: str) -> str:
    clock.advance(7 * DAY)  # the fake's default: a refresh token lives 7 days
    return token


def _revoked_by_the_user(server: FakeFeishu, clock: actors.ManualClock, token: str) -> str:
    server.oauth.revoke(ALICE)
    return token


@pytest.mark.parametrize(
    ("situation", "reason", "code"),
    [
        (_never_issued, "invalid", 20026),
        (_switched_off, "refresh_disabled", 20074),
        (_idle_seven_days, "expired", 20037),
        (_revoked_by_the_user, "revoked", 20064),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_the_servers_own_refusals_of_a_refresh_end_the_grant_with_their_reason(
    server: FakeFeishu,
    oauth: FeishuOAuth,
    app: actors.AppConfig,
    *,
    clock: actors.ManualClock,
    situation: Situation,
    reason: str,
    code: int,
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    presented = situation(server, clock, tokens.refresh_token)
    with pytest.raises(actors.ReauthorizationRequired) as info:
        oauth.refresh(app, presented, user=ALICE)
    assert (info.value.reason, info.value.code) == (reason, code)


def test_a_refresh_token_of_another_app_is_refused_as_wrong_app(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    other = actors.AppConfig(OTHER_ID, OTHER_SECRET, base_url=server.base_url)
    tokens = login(server, oauth, other)
    assert tokens.refresh_token is not None
    with pytest.raises(actors.ReauthorizationRequired) as info:
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    assert (info.value.reason, info.value.code, info.value.app_id) == ("wrong_app", 20024, APP_ID)


@pytest.mark.parametrize(
    "reply",
    [
        oauth_error(20050),
        Reply.http(502),
        Reply.http(503, "<html>maintenance</html>"),
        Reply.http(200, "<html>a portal page</html>"),
        Reply.truncated(),
        Reply.disconnect(),
        Reply.reset_mid_body(),
        oauth_error(29999),  # a code nobody documented, with HTTP 400
        oauth_error(20003),  # a code-exchange refusal answering a refresh
        Reply.code(0, "ok", status=400),
        success(error="invalid_grant"),
        Reply.http(200, "x" * 200_000),
    ],
    ids=repr,
)
def test_server_errors_and_ambiguous_answers_to_a_refresh_are_transient_and_keep_the_grant(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    server.script("user", reply)
    with pytest.raises(actors.UpstreamError) as info:
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    assert type(info.value) is actors.UpstreamError
    assert info.value.attempts == 1
    # The scripted answer consumed nothing: the same refresh token still rotates the grant.
    assert server.oauth.grant_alive(ALICE)
    assert oauth.refresh(app, tokens.refresh_token, user=ALICE).refresh_token is not None


def test_a_lost_answer_is_transient_and_its_retry_is_refused_as_revoked(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    server.oauth.lose_answer()
    with pytest.raises(actors.UpstreamError):
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    with pytest.raises(actors.ReauthorizationRequired, match="revoked"):
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    assert (server.oauth.rotations(ALICE), server.oauth.refresh_reuses) == (1, 1)


@pytest.mark.parametrize("reply", [Reply.rate_limited(reset=7), Reply.gateway_rate_limited(7)])
def test_rate_limiting_is_a_rate_limited_error_with_the_reset_header(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    server.script("user", reply, reply)
    with pytest.raises(actors.RateLimitedError) as refreshing:
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    with pytest.raises(actors.RateLimitedError) as exchanging:
        exchange(oauth, app, code)
    for info in (refreshing, exchanging):
        assert (info.value.retry_after, info.value.status, info.value.attempts) == (7.0, 429, 1)


@pytest.mark.parametrize("code", [20002, 20001, 21000, 21001, 10014])
def test_refused_credentials_requests_and_access_policies_are_auth_errors_that_keep_the_grant(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, code: int
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    server.script("user", oauth_error(code))
    with pytest.raises(actors.AuthError) as info:
        oauth.refresh(app, tokens.refresh_token, user=ALICE)
    assert info.value.code == code
    assert server.oauth.grant_alive(ALICE)


def test_a_wrong_client_secret_is_an_auth_error_that_does_not_echo_it(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    wrong = actors.AppConfig(APP_ID, "wrong-secret-123", base_url=server.base_url)
    with pytest.raises(actors.AuthError) as info:
        oauth.refresh(wrong, tokens.refresh_token, user=ALICE)
    assert info.value.code == 20002
    assert "client_secret is invalid" in str(info.value)
    assert "wrong-secret-123" not in str(info.value)


# --- refusals of a code exchange ---------------------------------------------------------------


def _made_up(server: FakeFeishu, clock: actors.ManualClock, redeem: Callable[[str], Any]) -> str:
    return secrets.token_hex(16)


def _redeemed_already(
    server: FakeFeishu, clock: actors.ManualClock, redeem: Callable[[str], Any]
) -> str:
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    redeem(code)
    return code


def _past_five_minutes(
    server: FakeFeishu, clock: actors.ManualClock, redeem: Callable[[str], Any]
) -> str:
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    clock.advance(300)
    return code


def _of_another_app(
    server: FakeFeishu, clock: actors.ManualClock, redeem: Callable[[str], Any]
) -> str:
    return server.oauth.issue_code(OTHER_ID, REDIRECT)


def _for_another_redirect(
    server: FakeFeishu, clock: actors.ManualClock, redeem: Callable[[str], Any]
) -> str:
    return server.oauth.issue_code(APP_ID, "http://127.0.0.1:8000/elsewhere")


@pytest.mark.parametrize(
    ("make_code", "code"),
    [
        (_made_up, 20003),
        (_redeemed_already, 20065),
        (_past_five_minutes, 20004),
        (_of_another_app, 20024),
        (_for_another_redirect, 20071),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_a_code_the_server_refuses_fails_the_login(
    server: FakeFeishu,
    oauth: FeishuOAuth,
    app: actors.AppConfig,
    *,
    clock: actors.ManualClock,
    make_code: Callable[[FakeFeishu, actors.ManualClock, Callable[[str], Any]], str],
    code: int,
) -> None:
    login_code = make_code(server, clock, lambda code: exchange(oauth, app, code))
    with pytest.raises(actors.AuthorizationCodeError) as info:
        exchange(oauth, app, login_code)
    assert info.value.code == code
    assert login_code not in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [
        oauth_error(20066),
        oauth_error(21000),
        oauth_error(20002),
        Reply.code(4242, "no", status=403),
    ],
    ids=repr,
)
def test_any_definite_refusal_of_a_code_fails_the_login(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    server.script("user", reply)
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    with pytest.raises(actors.AuthorizationCodeError) as info:
        exchange(oauth, app, code)
    assert info.value.code == json.loads(reply.body)["code"]


@pytest.mark.parametrize(
    "reply",
    [oauth_error(20050), Reply.http(502), Reply.disconnect(), Reply.code(4242, "odd", status=200)],
    ids=repr,
)
def test_server_errors_and_ambiguous_answers_to_a_code_exchange_are_transient(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    server.script("user", reply)
    code = server.oauth.issue_code(APP_ID, REDIRECT)
    with pytest.raises(actors.UpstreamError) as info:
        exchange(oauth, app, code)
    assert type(info.value) is actors.UpstreamError and info.value.attempts == 1
    tokens = exchange(oauth, app, code)
    assert server.valid_token(tokens.access_token)


# --- what a success must carry -----------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        success(expires_in=float("nan")),
        success(expires_in=1e10),
        success(expires_in=0),
        success(expires_in=-5),
        success(expires_in="7200"),
        success(expires_in=True),
        success(expires_in=...),
        Reply.raw('{"code":0,"access_token":"u-x1","expires_in":1e400}'),
        success(access_token=""),
        success(access_token=42),
        success(access_token="u-with space"),
        success(access_token="u-" + "x" * 5000),
        success(access_token=...),
        success(refresh_token=""),
        success(refresh_token=7),
        success(refresh_token_expires_in=float("nan")),
        success(refresh_token_expires_in=0),
        success(refresh_token_expires_in=-1),
        success(refresh_token_expires_in=366 * DAY + 1),
        success(refresh_token_expires_in="604800"),
    ],
    ids=lambda reply: reply.body.decode()[:80],
)
def test_a_success_without_usable_tokens_and_lifetimes_is_a_failed_attempt(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    server.script("user", reply)
    with pytest.raises(actors.UpstreamError, match="without a usable") as info:
        oauth.refresh(app, "ur-" + "c" * 32, user=ALICE)
    assert info.value.attempts == 1
    assert "u-" + "a" * 32 not in str(info.value) and "ur-" + "b" * 32 not in str(info.value)


@pytest.mark.parametrize("missing", [..., None], ids=["absent", "null"])
def test_a_refresh_token_without_its_lifetime_is_kept_for_seven_days(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, missing: object
) -> None:
    server.script("user", success(refresh_token_expires_in=missing))
    tokens = oauth.refresh(app, "ur-" + "c" * 32, user=ALICE)
    assert (tokens.refresh_token, tokens.refresh_expires_in) == ("ur-" + "b" * 32, 7 * DAY)


def test_lifetimes_up_to_a_day_and_a_year_and_a_day_are_kept_and_scopes_are_split(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    server.script(
        "user",
        success(expires_in=DAY, refresh_token_expires_in=366 * DAY, scope=" a  b "),
        success(refresh_token=None, scope=["x", "y"]),
    )
    first = oauth.refresh(app, "ur-" + "c" * 32, user=ALICE)
    second = oauth.refresh(app, "ur-" + "c" * 32, user=ALICE)
    assert (first.expires_in, first.refresh_expires_in, first.scope) == (DAY, 366 * DAY, ("a", "b"))
    assert (second.refresh_token, second.refresh_expires_in, second.scope) == (
        None,
        None,
        ("x", "y"),
    )


# --- user_info ---------------------------------------------------------------------------------


def test_user_info_with_a_revoked_or_expired_token_is_an_auth_error(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, clock: actors.ManualClock
) -> None:
    revoked = login(server, oauth, app)
    server.oauth.revoke(ALICE)
    expired = login(server, oauth, app, user=BOB)
    clock.advance(7200)
    with pytest.raises(actors.AuthError) as revoked_info:
        oauth.user_info(app, revoked.access_token)
    with pytest.raises(actors.AuthError) as expired_info:
        oauth.user_info(app, expired.access_token)
    assert (revoked_info.value.code, expired_info.value.code) == (99991668, 99991677)


@pytest.mark.parametrize(
    "reply",
    [
        Reply.raw('{"code":0,"msg":"success","data":{}}'),
        Reply.raw('{"code":0,"msg":"success","data":{"open_id":""}}'),
        Reply.raw('{"code":0,"msg":"success","data":{"open_id":42}}'),
        Reply.raw('{"code":0,"msg":"success","data":{"open_id":"ou_ with space"}}'),
        Reply.raw(json.dumps({"code": 0, "data": {"open_id": "ou_" + "x" * 300}})),
        Reply.raw('{"code":0,"msg":"success","data":"ou_alice"}'),
        Reply.raw('{"code":0,"data":{"open_id":"ou_alice"}}', status=500),
        Reply.http(502),
        Reply.code(99991663, "tenant token invalid", status=400),
    ],
    ids=lambda reply: reply.body.decode()[:60],
)
def test_user_info_without_a_usable_open_id_is_transient(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, reply: Reply
) -> None:
    tokens = login(server, oauth, app)
    server.script("business", reply)
    with pytest.raises(actors.UpstreamError) as info:
        oauth.user_info(app, tokens.access_token)
    assert type(info.value) is actors.UpstreamError and info.value.attempts == 1


def test_user_info_rate_limited_is_a_rate_limited_error(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    tokens = login(server, oauth, app)
    server.script("business", Reply.rate_limited(reset=3))
    with pytest.raises(actors.RateLimitedError) as info:
        oauth.user_info(app, tokens.access_token)
    assert info.value.retry_after == 3.0


# --- no credential in any error, repr or traceback ---------------------------------------------


def _frames_hold(error: BaseException, *values: str) -> list[str]:
    """The library frames of ``error``'s traceback whose variables show one of ``values``
    (the first frame is the test's own, which holds them all)."""
    tb = error.__traceback__
    assert tb is not None
    tb = tb.tb_next
    held = []
    while tb is not None:
        shown = repr(tb.tb_frame.f_locals)
        if any(v in shown for v in values):
            held.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return held


def test_tokens_show_no_token_in_their_repr(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    for token in (tokens.access_token, tokens.refresh_token):
        assert token not in repr(tokens)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (20003, actors.AuthorizationCodeError),
        (20002, actors.AuthorizationCodeError),
        (20050, actors.UpstreamError),
    ],
)
def test_an_echoed_code_exchange_shows_no_secret_code_or_verifier_anywhere(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, code: int, error: type[Exception]
) -> None:
    login_code, verifier = secrets.token_hex(16), secrets.token_urlsafe(48)
    echo = f'bad request {{"client_secret": "{SECRET}", "code": "{login_code}"}} {verifier}'
    server.script("user", oauth_error(code, echo))
    with pytest.raises(error) as info:
        oauth.exchange_code(app, code=login_code, redirect_uri=REDIRECT, code_verifier=verifier)
    text = f"{info.value} {info.value!r} {vars(info.value)}"
    assert "bad request" in text  # the rest of the message is kept
    for value in (SECRET, login_code, verifier):
        assert value not in text
    assert _frames_hold(info.value, SECRET, login_code, verifier) == []
    assert info.value.__context__ is None and info.value.__cause__ is None


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (20064, actors.ReauthorizationRequired),
        (20002, actors.AuthError),
        (20050, actors.UpstreamError),
        (29999, actors.UpstreamError),
    ],
)
def test_an_echoed_refresh_shows_no_secret_or_refresh_token_anywhere(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, code: int, error: type[Exception]
) -> None:
    refresh_token = "ur-" + secrets.token_hex(16)
    server.script("user", oauth_error(code, f"echo client_secret={SECRET} {refresh_token}"))
    with pytest.raises(error) as info:
        oauth.refresh(app, refresh_token, user=ALICE)
    text = f"{info.value} {info.value!r} {vars(info.value)}"
    assert SECRET not in text and refresh_token not in text
    assert _frames_hold(info.value, SECRET, refresh_token) == []


def test_an_echoed_user_info_refusal_shows_no_access_token_anywhere(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig
) -> None:
    tokens = login(server, oauth, app)
    server.script("business", Reply.code(99991668, f"echo {tokens.access_token}", status=400))
    with pytest.raises(actors.AuthError) as info:
        oauth.user_info(app, tokens.access_token)
    text = f"{info.value} {info.value!r} {vars(info.value)}"
    assert "echo" in text and tokens.access_token not in text
    assert _frames_hold(info.value, tokens.access_token) == []


# --- hardening: redirects and deadlines --------------------------------------------------------


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_is_refused_and_nothing_reaches_its_location(
    server: FakeFeishu, oauth: FeishuOAuth, app: actors.AppConfig, status: int
) -> None:
    tokens = login(server, oauth, app)
    assert tokens.refresh_token is not None
    with FakeFeishu() as elsewhere:
        elsewhere.add_app(APP_ID, SECRET)
        away = {"Location": elsewhere.base_url + V3}
        server.script("user", Reply.http(status, "", headers=away))
        server.script("business", Reply.http(status, "", headers=away))
        with pytest.raises(actors.UpstreamError, match="redirect refused") as refreshing:
            oauth.refresh(app, tokens.refresh_token, user=ALICE)
        with pytest.raises(actors.UpstreamError, match="redirect refused") as asking:
            oauth.user_info(app, tokens.access_token)
        assert elsewhere.requests == []
    assert refreshing.value.status == asking.value.status == status


def test_a_drip_fed_answer_fails_at_the_attempts_deadline(
    server: FakeFeishu, session: requests.Session, app: actors.AppConfig
) -> None:
    # Each byte arrives well within the read timeout; the whole body would take about 8 s, the
    # deadline (connect + read) is 1 s.
    server.script("user", Reply.drip(success(), interval=0.05))
    oauth = FeishuOAuth(session, timeout=(0.5, 0.5))
    with pytest.raises(actors.UpstreamError, match="deadline") as info:
        oauth.refresh(app, "ur-" + "c" * 32, user=ALICE)
    assert info.value.status == 200


# --- the table ---------------------------------------------------------------------------------


_FAKES_RULE_TO_OURS = {
    fake_protocol.UserRule.LOGIN_FAILED: feishu.UserRule.CODE_REFUSED,
    fake_protocol.UserRule.REAUTHORIZE: feishu.UserRule.REAUTHORIZE,
    fake_protocol.UserRule.REREAD: feishu.UserRule.REAUTHORIZE,
    fake_protocol.UserRule.TRANSIENT: feishu.UserRule.TRANSIENT,
    fake_protocol.UserRule.BLOCKED: feishu.UserRule.PERMANENT,
    fake_protocol.UserRule.REFUSED: feishu.UserRule.PERMANENT,
    fake_protocol.UserRule.ROTATE_AND_RETRY: feishu.UserRule.TOKEN_INVALID,
}


def test_the_user_token_table_agrees_with_the_codes_the_fake_server_writes_out() -> None:
    for code, rule in fake_protocol.USER_MEANINGS.items():
        assert feishu.USER_TOKEN_CODES[code].rule is _FAKES_RULE_TO_OURS[rule], code
    for code, reason in fake_protocol.USER_REASONS.items():
        assert feishu.USER_TOKEN_CODES[code].reason == reason, code


def test_every_reauthorization_row_and_only_those_name_a_documented_reason() -> None:
    for row in feishu.USER_TOKEN_CODES.values():
        if row.rule is feishu.UserRule.REAUTHORIZE:
            assert row.reason in REAUTHORIZATION_REASONS, row
        else:
            assert row.reason is None, row


def test_definite_user_token_refusals_win_over_http_429_and_unknown_codes_are_transient() -> None:
    rule = feishu.user_rule_for
    assert rule(20064, 429) is feishu.UserRule.REAUTHORIZE
    assert rule(20050, 429) is rule(99991400, 400) is feishu.UserRule.RATE_LIMITED
    assert rule(20050, 500) is rule(4242, 400) is rule(99991663, 400) is feishu.UserRule.TRANSIENT
    assert rule(10014, 400) is feishu.UserRule.PERMANENT  # the app's credentials, as for app tokens
