"""Tests of the fake server's user-token side (the authorize page, the v3 and v2 token
endpoints, user_info and a business route taking user tokens), driven over real loopback HTTP
with ``requests``: the contract of ``docs/feishu-protocol.md``, "User access tokens"."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from actors._clock import ManualClock
from actors.testing import FakeFeishu, Redemption, Reply, oauth_error
from tests.fake_apps import SELF, STORE, serve_two_apps

AUTHORIZE = "/open-apis/authen/v1/authorize"
V3 = "/oauth/v3/token"
V2 = "/open-apis/authen/v2/oauth/token"
USER_INFO = "/open-apis/authen/v1/user_info"
CALENDARS = "/open-apis/calendar/v4/calendars"
CHATS = "/open-apis/im/v1/chats"
REDIRECT = "http://127.0.0.1:8000/callback"
DAY = 86400.0
TIMEOUT = 5.0


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeFeishu]:
    # ``clock`` is the suite's ManualClock; Alice is signed in (added first).
    with serve_two_apps(clock) as fake:
        fake.oauth.add_user("ou_alice", name="Alice", tenant_key="tenant_a", user_id="u_alice")
        fake.oauth.add_user("ou_bob", name="Bob", tenant_key="tenant_b")
        yield fake


def challenge_of(verifier: str) -> str:
    # Written out here rather than taken from the fake: RFC 7636 S256.
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(server: FakeFeishu, **params: str) -> requests.Response:
    query = {"client_id": SELF["app_id"], "redirect_uri": REDIRECT, "state": "st-1"}
    query |= {"scope": "offline_access calendar:calendar:readonly"} | params
    return requests.get(
        server.base_url + AUTHORIZE, params=query, allow_redirects=False, timeout=TIMEOUT
    )


def redirected(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return {k: v[-1] for k, v in parse_qs(location.query).items()}


def post_token(server: FakeFeishu, body: dict[str, Any], path: str = V3) -> requests.Response:
    return requests.post(server.base_url + path, json=body, timeout=TIMEOUT)


def exchange(
    server: FakeFeishu, code: str, *, verifier: str | None = None, path: str = V3, **extra: str
) -> requests.Response:
    body: dict[str, Any] = {"grant_type": "authorization_code", "client_id": SELF["app_id"]}
    body |= {"client_secret": SELF["app_secret"], "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        body["code_verifier"] = verifier
    return post_token(server, body | extra, path)


def refresh(
    server: FakeFeishu, refresh_token: str, *, path: str = V3, app: dict[str, str] = SELF
) -> requests.Response:
    body = {"grant_type": "refresh_token", "client_id": app["app_id"]}
    body |= {"client_secret": app["app_secret"], "refresh_token": refresh_token}
    return post_token(server, body, path)


def login(server: FakeFeishu, scope: str = "offline_access") -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    challenge = {"code_challenge": challenge_of(verifier), "code_challenge_method": "S256"}
    code = redirected(authorize(server, scope=scope, **challenge))["code"]
    answer = exchange(server, code, verifier=verifier)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def get(server: FakeFeishu, path: str, token: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(server.base_url + path, headers=headers, timeout=TIMEOUT)


def refused(response: requests.Response, code: int, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["error"] and body["error_description"]
    assert "access_token" not in body


# --- the whole flow ----------------------------------------------------------------------------


def test_a_user_logs_in_is_known_by_user_info_and_stays_logged_in_through_rotations(
    server: FakeFeishu,
) -> None:
    verifier = secrets.token_urlsafe(48)
    page = authorize(
        server, code_challenge=challenge_of(verifier), code_challenge_method="S256", state="xyz"
    )
    callback = redirected(page)
    assert callback["state"] == "xyz"

    tokens = exchange(server, callback["code"], verifier=verifier)

    assert tokens.status_code == 200
    body = tokens.json()
    assert body["code"] == 0
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200
    assert body["refresh_token_expires_in"] == 604800
    assert body["scope"] == "offline_access calendar:calendar:readonly"
    info = get(server, USER_INFO, body["access_token"]).json()
    assert info["code"] == 0
    assert info["data"]["open_id"] == "ou_alice"
    assert info["data"]["name"] == "Alice"
    assert info["data"]["tenant_key"] == "tenant_a"
    assert info["data"]["user_id"] == "u_alice"
    assert info["data"]["union_id"]

    chain = [body["refresh_token"]]
    for _ in range(5):
        rotated = refresh(server, chain[-1]).json()
        assert rotated["code"] == 0
        assert rotated["refresh_token"] not in chain
        assert get(server, CALENDARS, rotated["access_token"]).json()["code"] == 0
        chain.append(rotated["refresh_token"])

    assert server.oauth.rotations("ou_alice") == 5
    assert server.oauth.refresh_reuses == 0
    assert server.oauth.grant_alive("ou_alice", app_id=SELF["app_id"])


def test_the_authorize_page_keeps_the_redirect_uris_own_query_and_omits_an_absent_state(
    server: FakeFeishu,
) -> None:
    query = {"client_id": SELF["app_id"], "redirect_uri": REDIRECT + "?next=%2Fhome"}
    page = requests.get(
        server.base_url + AUTHORIZE, params=query, allow_redirects=False, timeout=TIMEOUT
    )

    assert page.status_code == 302
    params = parse_qs(urlsplit(page.headers["Location"]).query)
    assert params["next"] == ["/home"]
    assert "code" in params
    assert "state" not in params


def test_the_signed_in_user_is_the_one_who_consents(server: FakeFeishu) -> None:
    server.oauth.sign_in("ou_bob")

    tokens = login(server)

    assert get(server, USER_INFO, tokens["access_token"]).json()["data"]["open_id"] == "ou_bob"
    assert "user_id" not in get(server, USER_INFO, tokens["access_token"]).json()["data"]


def test_a_code_issued_without_the_browser_logs_that_user_in(server: FakeFeishu) -> None:
    code = server.oauth.issue_code(SELF["app_id"], REDIRECT, user="ou_bob")

    tokens = exchange(server, code).json()

    assert get(server, USER_INFO, tokens["access_token"]).json()["data"]["open_id"] == "ou_bob"
    assert tokens["refresh_token"]


def test_a_declined_consent_redirects_with_access_denied_and_no_code(server: FakeFeishu) -> None:
    server.oauth.deny_next()

    declined = redirected(authorize(server))
    accepted = redirected(authorize(server))

    assert declined == {"error": "access_denied", "state": "st-1"}
    assert "code" in accepted


def test_the_v2_endpoint_follows_the_same_rules_and_shares_the_chain(server: FakeFeishu) -> None:
    code = redirected(authorize(server))["code"]
    first = exchange(server, code, path=V2).json()

    second = refresh(server, first["refresh_token"], path=V3).json()
    third = refresh(server, second["refresh_token"], path=V2).json()

    assert [first["code"], second["code"], third["code"]] == [0, 0, 0]
    refused(refresh(server, first["refresh_token"], path=V2), 20064)
    paths = [r.path for r in server.oauth.redemptions]
    assert paths == [V2, V3, V2, V2]


# --- codes: single use, lifetime, PKCE, client ---------------------------------------------------


def test_a_code_is_redeemed_once(server: FakeFeishu) -> None:
    code = redirected(authorize(server))["code"]

    assert exchange(server, code).status_code == 200
    refused(exchange(server, code), 20065)
    refused(exchange(server, "never-issued"), 20003)


def test_a_code_dies_after_five_minutes_on_the_servers_clock(
    server: FakeFeishu, clock: ManualClock
) -> None:
    late, in_time = redirected(authorize(server))["code"], redirected(authorize(server))["code"]

    clock.advance(299.0)
    assert exchange(server, in_time).status_code == 200
    clock.advance(1.0)
    refused(exchange(server, late), 20004)


def test_a_code_with_a_challenge_needs_the_matching_verifier(server: FakeFeishu) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = {"code_challenge": challenge_of(verifier), "code_challenge_method": "S256"}
    code = redirected(authorize(server, **challenge))["code"]

    refused(exchange(server, code), 20049)
    refused(exchange(server, code, verifier=secrets.token_urlsafe(48)), 20049)
    refused(exchange(server, code, verifier="short"), 20049)
    assert exchange(server, code, verifier=verifier).status_code == 200


def test_the_authorize_page_takes_only_s256_challenges(server: FakeFeishu) -> None:
    refused(authorize(server, code_challenge="abc", code_challenge_method="plain"), 20001)
    refused(authorize(server, code_challenge="abc"), 20001)
    refused(authorize(server, code_challenge_method="S256"), 20001)


def test_the_authorize_page_refuses_unknown_apps_and_unregistered_redirect_uris(
    server: FakeFeishu,
) -> None:
    server.oauth.configure(SELF["app_id"], redirect_uris=[REDIRECT])

    refused(authorize(server, client_id="cli_nobody"), 20002)
    refused(authorize(server, redirect_uri="http://elsewhere.example/cb"), 20071)
    refused(authorize(server, redirect_uri="javascript:alert(1)"), 20001)
    assert authorize(server).status_code == 302
    with pytest.raises(ValueError, match="20071"):
        server.oauth.issue_code(SELF["app_id"], "http://elsewhere.example/cb")


def test_a_code_is_redeemed_only_with_its_redirect_uri_its_app_and_the_apps_secret(
    server: FakeFeishu,
) -> None:
    code = redirected(authorize(server))["code"]

    refused(exchange(server, code, redirect_uri="http://127.0.0.1:8000/other"), 20071)
    refused(exchange(server, code, client_secret="wrong"), 20002)
    store = {"client_id": STORE["app_id"], "client_secret": STORE["app_secret"]}
    refused(exchange(server, code, **store), 20024)
    assert exchange(server, code).status_code == 200


def test_malformed_token_requests_are_refused(server: FakeFeishu) -> None:
    client = {"client_id": SELF["app_id"], "client_secret": SELF["app_secret"]}
    not_json = requests.post(server.base_url + V3, data="grant_type=refresh_token", timeout=TIMEOUT)

    refused(not_json, 20001)
    refused(post_token(server, {"grant_type": "password"} | client), 20001)
    refused(post_token(server, {"grant_type": "refresh_token"} | client), 20001)
    refused(post_token(server, {"grant_type": "authorization_code"} | client), 20001)


# --- refresh tokens: rotation, reuse, offline_access ---------------------------------------------


def test_a_refresh_token_is_dead_once_redeemed_and_a_reuse_is_answered_20064_and_counted(
    server: FakeFeishu,
) -> None:
    first = login(server)
    second = refresh(server, first["refresh_token"]).json()

    refused(refresh(server, first["refresh_token"]), 20064)
    refused(refresh(server, first["refresh_token"]), 20064)

    assert server.oauth.refresh_reuses == 2
    reuse = server.oauth.redemptions[-1]
    assert reuse == Redemption(
        reuse.at, V3, SELF["app_id"], "ou_alice", "refresh_token", 20064, True
    )
    # A lost race does not end the chain: the winner's token still rotates.
    assert refresh(server, second["refresh_token"]).json()["code"] == 0
    assert server.oauth.refresh_reuses == 2


def test_two_concurrent_redemptions_of_one_refresh_token_yield_one_success_and_one_reuse(
    server: FakeFeishu,
) -> None:
    tokens = login(server)
    gate = server.hold("user", app_id=SELF["app_id"])
    answers: list[requests.Response] = []

    def redeem() -> None:
        answers.append(refresh(server, tokens["refresh_token"]))

    threads = [threading.Thread(target=redeem) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert gate.wait_for_waiting(2)
    gate.release()
    for thread in threads:
        thread.join(TIMEOUT)

    assert sorted(a.json()["code"] for a in answers) == [0, 20064]
    assert server.oauth.refresh_reuses == 1
    assert server.oauth.rotations() == 1


def test_old_access_tokens_stay_valid_until_their_own_expiry_after_a_rotation(
    server: FakeFeishu, clock: ManualClock
) -> None:
    first = login(server)
    clock.advance(3600.0)
    second = refresh(server, first["refresh_token"]).json()

    assert get(server, CALENDARS, first["access_token"]).json()["code"] == 0
    clock.advance(3600.0)
    assert get(server, CALENDARS, first["access_token"]).json()["code"] == 99991677
    assert get(server, CALENDARS, second["access_token"]).json()["code"] == 0


def test_no_refresh_token_is_issued_without_offline_access(server: FakeFeishu) -> None:
    tokens = login(server, scope="calendar:calendar:readonly")

    assert tokens["access_token"]
    assert "refresh_token" not in tokens
    assert "refresh_token_expires_in" not in tokens
    assert not server.oauth.grant_alive("ou_alice")


def test_no_refresh_token_is_issued_when_the_console_lacks_offline_access(
    server: FakeFeishu,
) -> None:
    server.oauth.configure(SELF["app_id"], offline_access=False)

    assert "refresh_token" not in login(server)


def test_the_refresh_switch_turned_off_answers_20074(server: FakeFeishu) -> None:
    tokens = login(server)
    server.oauth.configure(SELF["app_id"], refresh_enabled=False)

    refused(refresh(server, tokens["refresh_token"]), 20074)
    assert "refresh_token" not in login(server)
    server.oauth.configure(SELF["app_id"], refresh_enabled=True)
    assert refresh(server, tokens["refresh_token"]).json()["code"] == 0


def test_refresh_tokens_of_another_app_or_never_issued_are_refused(server: FakeFeishu) -> None:
    tokens = login(server)

    refused(refresh(server, tokens["refresh_token"], app=STORE), 20024)
    refused(refresh(server, "ur-never-issued"), 20026)
    refused(refresh(server, tokens["refresh_token"], app=SELF | {"app_secret": "x"}), 20002)
    assert server.oauth.refresh_reuses == 0
    assert refresh(server, tokens["refresh_token"]).json()["code"] == 0


def test_a_revoked_authorization_kills_every_token_without_counting_a_reuse(
    server: FakeFeishu,
) -> None:
    tokens = login(server)
    unredeemed = redirected(authorize(server))["code"]

    server.oauth.revoke("ou_alice")

    refused(refresh(server, tokens["refresh_token"]), 20064)
    assert get(server, USER_INFO, tokens["access_token"]).json()["code"] == 99991668
    refused(exchange(server, unredeemed), 20065)
    assert server.oauth.refresh_reuses == 0
    assert not server.oauth.grant_alive("ou_alice")


# --- lifetimes on the server's clock -------------------------------------------------------------


def test_a_grant_rotated_every_six_days_lives_on_and_one_idle_seven_days_dies(
    server: FakeFeishu, clock: ManualClock
) -> None:
    kept = login(server)["refresh_token"]
    server.oauth.sign_in("ou_bob")
    idle = login(server)["refresh_token"]

    for rotation in range(5):
        clock.advance(6 * DAY)
        assert server.oauth.grant_alive("ou_bob") is (rotation == 0)
        answer = refresh(server, kept).json()
        assert answer["code"] == 0
        assert answer["refresh_token_expires_in"] == 604800
        kept = answer["refresh_token"]

    refused(refresh(server, idle), 20037)
    assert server.oauth.grant_alive("ou_alice")
    assert not server.oauth.grant_alive("ou_bob")


def test_a_refresh_token_dies_exactly_at_its_refresh_token_expires_in(
    server: FakeFeishu, clock: ManualClock
) -> None:
    server.oauth.set_lifetimes(access_token=60, refresh_token=300)
    tokens = login(server)
    assert (tokens["expires_in"], tokens["refresh_token_expires_in"]) == (60, 300)
    spare = refresh(server, tokens["refresh_token"]).json()

    clock.advance(299.0)
    assert refresh(server, spare["refresh_token"]).json()["code"] == 0
    last = refresh(server, login(server)["refresh_token"]).json()["refresh_token"]
    clock.advance(300.0)
    refused(refresh(server, last), 20037)


def test_no_refresh_succeeds_after_the_grants_limit_since_consent(
    server: FakeFeishu, clock: ManualClock
) -> None:
    server.oauth.set_lifetimes(grant=10 * DAY)
    tokens = login(server)

    clock.advance(6 * DAY)
    capped = refresh(server, tokens["refresh_token"]).json()
    assert capped["refresh_token_expires_in"] == 4 * DAY
    clock.advance(4 * DAY)
    refused(refresh(server, capped["refresh_token"]), 20037)


def test_lifetimes_must_be_at_least_a_second(server: FakeFeishu) -> None:
    with pytest.raises(ValueError, match="access_token"):
        server.oauth.set_lifetimes(access_token=0)
    with pytest.raises(ValueError, match="refresh_token"):
        server.oauth.set_lifetimes(refresh_token=float("nan"))
    with pytest.raises(ValueError, match="grant"):
        server.oauth.set_lifetimes(grant=float("inf"))
    assert server.oauth.lifetimes.refresh_token == 604800


# --- business routes taking user tokens ----------------------------------------------------------


@pytest.mark.parametrize("path", [USER_INFO, CALENDARS])
def test_user_routes_answer_99991677_for_an_expired_user_token_and_99991668_for_others(
    server: FakeFeishu, clock: ManualClock, path: str
) -> None:
    tokens = login(server)
    tenant = post_token(server, SELF, "/open-apis/auth/v3/tenant_access_token/internal").json()

    assert get(server, path, tokens["access_token"]).json()["code"] == 0
    assert get(server, path, "u-never-issued").json()["code"] == 99991668
    assert get(server, path, tenant["tenant_access_token"]).json()["code"] == 99991668
    assert get(server, path, "garbage").json()["code"] == 99991671
    clock.advance(7200.0)
    expired = get(server, path, tokens["access_token"])
    assert expired.status_code == 400
    assert expired.json()["code"] == 99991677


def test_a_user_token_is_not_a_tenant_token(server: FakeFeishu) -> None:
    tokens = login(server)

    assert get(server, CHATS, tokens["access_token"]).json()["code"] == 99991663


def test_the_calendar_route_lists_the_token_users_primary_calendar(server: FakeFeishu) -> None:
    tokens = login(server)

    data = get(server, CALENDARS, tokens["access_token"]).json()["data"]

    assert [c["type"] for c in data["calendar_list"]] == ["primary"]
    assert "ou_alice" in data["calendar_list"][0]["calendar_id"]
    business = [r for r in server.requests if r.kind == "business"]
    assert business[-1].token == tokens["access_token"]
    assert business[-1].tenant_key == "tenant_a"


# --- scripted and faulty answers, records --------------------------------------------------------


@pytest.mark.parametrize(("code", "status"), [(20050, 500), (20037, 400), (20074, 400)])
def test_any_code_is_answered_on_demand_and_consumes_nothing(
    server: FakeFeishu, code: int, status: int
) -> None:
    tokens = login(server)
    server.script("user", oauth_error(code))

    refused(refresh(server, tokens["refresh_token"]), code, status)

    assert refresh(server, tokens["refresh_token"]).json()["code"] == 0
    assert server.oauth.refresh_reuses == 0


def test_a_lost_answer_rotates_on_the_server_and_a_retry_is_a_counted_reuse(
    server: FakeFeishu,
) -> None:
    tokens = login(server)
    server.oauth.lose_answer(user="ou_alice")

    with pytest.raises(requests.ConnectionError):
        refresh(server, tokens["refresh_token"])

    refused(refresh(server, tokens["refresh_token"]), 20064)
    assert server.oauth.refresh_reuses == 1
    assert server.oauth.rotations("ou_alice") == 1
    assert server.oauth.grant_alive("ou_alice")


def test_a_lost_answer_for_one_user_spares_the_others(server: FakeFeishu) -> None:
    alice = login(server)
    server.oauth.lose_answer(Reply.http(502), user="ou_bob")

    assert refresh(server, alice["refresh_token"]).json()["code"] == 0
    server.oauth.sign_in("ou_bob")
    bob = login(server)
    assert refresh(server, bob["refresh_token"]).status_code == 502


def test_an_outage_answers_user_token_requests_with_an_html_503(server: FakeFeishu) -> None:
    tokens = login(server)
    server.set_outage(True)

    down = refresh(server, tokens["refresh_token"])

    assert down.status_code == 503
    assert down.headers["Content-Type"].startswith("text/html")
    server.set_outage(False)
    assert refresh(server, tokens["refresh_token"]).json()["code"] == 0


def test_requests_are_recorded_by_kind_without_secrets_codes_or_refresh_tokens(
    server: FakeFeishu,
) -> None:
    tokens = login(server)
    refresh(server, tokens["refresh_token"])

    recorded = [r for r in server.requests if r.kind in ("authorize", "user")]
    text = repr(server.requests) + repr(server.oauth.redemptions) + repr(server)

    assert [r.kind for r in recorded] == ["authorize", "user", "user"]
    assert {r.app_id for r in recorded} == {SELF["app_id"]}
    assert [r.tenant_key for r in recorded[1:]] == ["tenant_a", "tenant_a"]
    assert [r.grant_type for r in server.oauth.redemptions] == [
        "authorization_code",
        "refresh_token",
    ]
    assert server.count("user", app_id=SELF["app_id"]) == 2
    for value in (SELF["app_secret"], tokens["refresh_token"], tokens["access_token"]):
        assert value not in text
    assert all(not r.body for r in recorded)


def test_the_in_process_adapter_serves_the_authorize_page_and_user_info(
    server: FakeFeishu,
) -> None:
    session = requests.Session()
    session.mount(server.base_url, server.adapter())
    query = {"client_id": SELF["app_id"], "redirect_uri": REDIRECT, "scope": "offline_access"}

    page = session.get(
        server.base_url + AUTHORIZE, params=query, allow_redirects=False, timeout=TIMEOUT
    )
    code = redirected(page)["code"]
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    body |= {"client_id": SELF["app_id"], "client_secret": SELF["app_secret"]}
    tokens = session.post(server.base_url + V3, json=body, timeout=TIMEOUT).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    info = session.get(server.base_url + USER_INFO, headers=headers, timeout=TIMEOUT).json()

    assert info["data"]["open_id"] == "ou_alice"


def test_steering_names_only_known_users(server: FakeFeishu) -> None:
    with pytest.raises(ValueError, match="ou_nobody"):
        server.oauth.sign_in("ou_nobody")
    with pytest.raises(ValueError, match="ou_nobody"):
        server.oauth.issue_code(SELF["app_id"], REDIRECT, user="ou_nobody")


def test_the_authorize_page_without_any_test_user_says_how_to_add_one(clock: ManualClock) -> None:
    with serve_two_apps(clock) as fake:
        page = authorize(fake)

    refused(page, 20001)
    assert "add_user" in page.json()["error_description"]
