"""Keyless apps: ``AppConfig(app_id, client_assertion=provider)`` gets tenant tokens and user
tokens with a client assertion instead of a secret (``docs/feishu-protocol.md``, "Keyless
apps"), against the fake Feishu over loopback HTTP, which verifies every assertion with the
public half of a key pair made here."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import actors
from actors.feishu._client import FeishuAuthClient
from actors.feishu._oauth import FeishuOAuth, accounts_url, assertion_audience
from actors.stores._base import credentials_digest
from actors.testing import FakeFeishu, Reply, assertion_provider
from actors.testing._assertions import AssertionProvider
from tests.conftest import SystemFactory
from tests.users.conftest import REDIRECT, TIMEOUT
from tests.users.test_rotation import run_for

KEYLESS = "cli_keyless"
TENANT = actors.TokenKind.TENANT
USER = actors.TokenKind.USER
V3 = "/oauth/v3/token"
# Written out here rather than taken from the library: RFC 7523's names.
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def server(clock: actors.ManualClock, key: rsa.RSAPrivateKey) -> Iterator[FakeFeishu]:
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(KEYLESS, public_key=key.public_key())
        fake.oauth.add_user("ou_alice", name="Alice")
        yield fake


class Recording:
    """A provider that records every assertion it made and the thread it ran on."""

    def __init__(self, inner: AssertionProvider) -> None:
        self.inner = inner
        self.made: list[str] = []
        self.threads: list[str] = []

    def __call__(self, aud: str) -> str:
        self.threads.append(threading.current_thread().name)
        assertion = self.inner(aud)
        self.made.append(assertion)
        return assertion


@pytest.fixture
def signer(key: rsa.RSAPrivateKey, clock: actors.ManualClock) -> AssertionProvider:
    return assertion_provider(key, KEYLESS, clock=clock)


@pytest.fixture
def provider(signer: AssertionProvider) -> Recording:
    return Recording(signer)


def keyless(server: FakeFeishu, provider: Callable[[str], str]) -> actors.AppConfig:
    return actors.AppConfig(KEYLESS, client_assertion=provider, base_url=server.base_url)


class RecordingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    def post(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.bodies.append(json.loads(kwargs["data"]))
        return super().post(url, *args, **kwargs)


def raising(exc: Exception) -> Callable[[str], str]:
    def provider(aud: str) -> str:
        raise exc

    return provider


def returning(value: object) -> Callable[[str], str]:
    return lambda aud: value  # type: ignore[return-value]  # what a buggy provider does


def auth_client(session: requests.Session) -> FeishuAuthClient:
    """The auth client as a system builds it: keyless apps' tenant tokens through OAuth."""
    oauth = FeishuOAuth(session, timeout=(1.0, 2.0))
    return FeishuAuthClient(session, timeout=(1.0, 2.0), keyless=oauth.tenant_grant)


def failed_attempt(
    server: FakeFeishu, provider: Callable[[str], str], kind: actors.TokenKind = TENANT
) -> actors.AuthError:
    """The AuthError one attempt at a keyless app's token ends in."""
    client = auth_client(requests.Session())
    with pytest.raises(actors.AuthError) as info:
        client.fetch(actors.TokenRequest(app=keyless(server, provider), kind=kind))
    return info.value


# --- the configuration --------------------------------------------------------------------------


def test_a_keyless_app_has_a_provider_and_no_secret(signer: AssertionProvider) -> None:
    app = actors.AppConfig(KEYLESS, client_assertion=signer)
    assert app.keyless and app.app_secret is None and app.client_assertion is signer
    assert not actors.AppConfig(KEYLESS, "s3cret").keyless


def test_an_app_takes_exactly_one_of_a_secret_and_a_client_assertion(
    signer: AssertionProvider,
) -> None:
    with pytest.raises(ValueError, match="app_secret must be a non-empty string"):
        actors.AppConfig(KEYLESS)
    with pytest.raises(ValueError, match="not both"):
        actors.AppConfig(KEYLESS, "s3cret", client_assertion=signer)


def test_a_client_assertion_that_is_not_callable_is_refused_without_showing_it() -> None:
    pem = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ"
    with pytest.raises(ValueError, match="callable provider") as info:
        actors.AppConfig(KEYLESS, client_assertion=pem)  # type: ignore[arg-type]
    assert pem not in str(info.value) and "str" in str(info.value)


def test_a_marketplace_app_cannot_be_keyless(signer: AssertionProvider) -> None:
    with pytest.raises(ValueError, match="marketplace app cannot be keyless"):
        actors.AppConfig(KEYLESS, client_assertion=signer, app_type=actors.AppType.MARKETPLACE)


def test_a_keyless_app_redeems_user_tokens_on_the_v3_endpoint_only(
    signer: AssertionProvider,
) -> None:
    with pytest.raises(ValueError, match="must be 'v3' for a keyless app"):
        actors.AppConfig(KEYLESS, client_assertion=signer, user_token_endpoint="v2")


def test_the_repr_masks_the_provider_whatever_its_own_repr_shows(
    key: rsa.RSAPrivateKey,
) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    line = pem.splitlines()[1]  # a line of the key's base64
    # A partial's repr shows its arguments: here, the private key.
    leaky = functools.partial(lambda pem, aud: "x.y.z", pem)
    assert line in repr(leaky)
    app = actors.AppConfig(KEYLESS, client_assertion=leaky)
    assert repr(app) == (
        "AppConfig(app_id='cli_keyless', client_assertion=<provider>, "
        "app_type='self_built', base_url='https://open.feishu.cn')"
    )
    assert line not in str(app)


def test_a_keyless_app_is_hashable_and_equal_by_its_provider() -> None:
    class Provider:
        __hash__ = None  # type: ignore[assignment]  # an object with __eq__ and no hash

        def __call__(self, aud: str) -> str:
            return "x.y.z"

    provider = Provider()
    app = actors.AppConfig(KEYLESS, client_assertion=provider)
    assert hash(app) == hash(actors.AppConfig(KEYLESS, client_assertion=provider))
    assert app == actors.AppConfig(KEYLESS, client_assertion=provider)
    assert app != actors.AppConfig(KEYLESS, client_assertion=Provider())


def test_the_audience_is_the_accounts_host_of_the_domain_or_the_base_urls_host_and_port(
    signer: AssertionProvider,
) -> None:
    def aud(base_url: str) -> str:
        return assertion_audience(
            actors.AppConfig(KEYLESS, client_assertion=signer, base_url=base_url)
        )

    assert aud(actors.FEISHU) == "accounts.feishu.cn"
    assert aud(actors.LARK) == "accounts.larksuite.com"
    assert aud("https://feishu-proxy.example.com:8443/") == "feishu-proxy.example.com:8443"
    assert aud("http://127.0.0.1:8080") == "127.0.0.1:8080"


def test_a_keyless_apps_store_keys_are_the_same_for_every_provider_and_not_a_secret_apps(
    signer: AssertionProvider,
) -> None:
    one = actors.AppConfig(KEYLESS, client_assertion=signer)
    other = actors.AppConfig(KEYLESS, client_assertion=returning("x.y.z"))
    assert credentials_digest(one) == credentials_digest(other)
    assert credentials_digest(one) != credentials_digest(actors.AppConfig(KEYLESS, "s3cret"))
    elsewhere = actors.AppConfig(KEYLESS, client_assertion=signer, base_url=actors.LARK)
    assert credentials_digest(one) != credentials_digest(elsewhere)


# --- one attempt, through the client ------------------------------------------------------------


def test_a_tenant_token_is_the_jwt_bearer_grant_on_the_accounts_host_with_a_fresh_assertion(
    server: FakeFeishu, provider: Recording
) -> None:
    app = keyless(server, provider)
    session = RecordingSession()
    grant = auth_client(session).fetch(actors.TokenRequest(app=app, kind=TENANT))
    assert server.valid_token(grant.token) and grant.expire == 7200
    assert accounts_url(app) == server.base_url  # the fake serves the accounts paths itself
    assert provider.inner.audiences == (server.base_url.removeprefix("http://"),)
    assert session.bodies == [
        {
            "client_id": KEYLESS,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": provider.made[0],
            "grant_type": JWT_BEARER,
        }
    ]
    assert [r.path for r in server.requests] == [V3]
    assert server.oauth.assertions == 1


def test_a_refused_assertion_is_an_auth_error_that_does_not_quote_it(
    server: FakeFeishu, clock: actors.ManualClock
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = Recording(assertion_provider(other, KEYLESS, clock=clock))
    error = failed_attempt(server, wrong)
    assert error.code == 20002
    assert "signature" in str(error)
    for part in wrong.made[0].split(".")[1:]:
        assert part not in str(error) and part not in repr(error)
    assert server.oauth.refused_assertions == 1


def test_an_assertion_echoed_by_the_upstream_is_redacted_from_the_error(
    server: FakeFeishu,
) -> None:
    fixed = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJjbGlfa2V5bGVzcyJ9.c2lnbmF0dXJlLW9mLXRoZS1rZXk"
    said = f'bad request {{"client_assertion": "{fixed}"}} and again {fixed}'
    body = {"code": 20002, "error": "invalid_client", "error_description": said}
    server.script("user", Reply.raw(json.dumps(body), status=400))
    error = failed_attempt(server, returning(fixed))
    assert error.code == 20002 and "bad request" in str(error)
    for part in fixed.split(".")[1:]:
        assert part not in str(error)


@pytest.mark.parametrize(
    "exc", [RuntimeError("-----BEGIN PRIVATE KEY----- MIIEvQ"), KeyError("/secrets/key.pem")]
)
def test_a_provider_that_raises_is_an_auth_error_naming_only_the_exceptions_class(
    server: FakeFeishu, exc: Exception
) -> None:
    error = failed_attempt(server, raising(exc))
    assert error.code == 7102
    assert type(exc).__name__ in str(error)
    assert str(exc.args[0]) not in str(error) and str(exc.args[0]) not in repr(error)
    assert error.__context__ is None and error.__cause__ is None
    assert server.requests == []  # nothing was sent


@pytest.mark.parametrize("value", [None, "", "   ", b"x.y.z", 42])
def test_a_provider_that_returns_no_assertion_is_an_auth_error_and_nothing_is_sent(
    server: FakeFeishu, value: object
) -> None:
    assert failed_attempt(server, returning(value)).code == 7101
    assert server.requests == []


def test_a_keyless_app_has_no_app_token_and_asks_for_none(
    server: FakeFeishu, provider: Recording
) -> None:
    assert failed_attempt(server, provider, actors.TokenKind.APP).code == 7100
    assert provider.made == [] and server.requests == []


def test_user_grants_send_the_assertion_instead_of_the_secret_even_when_v2_is_forced(
    server: FakeFeishu, provider: Recording
) -> None:
    app = keyless(server, provider)
    session = RecordingSession()
    oauth = FeishuOAuth(session, timeout=(1.0, 2.0), version="v2")
    code = server.oauth.issue_code(KEYLESS, REDIRECT)
    tokens = oauth.exchange_code(app, code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert tokens.refresh_token is not None
    rotated = oauth.refresh(app, tokens.refresh_token, user="ou_alice")
    assert rotated.access_token != tokens.access_token
    assert [b["grant_type"] for b in session.bodies] == ["authorization_code", "refresh_token"]
    for body, made in zip(session.bodies, provider.made, strict=True):
        assert body["client_assertion"] == made
        assert body["client_assertion_type"] == ASSERTION_TYPE and "client_secret" not in body
    assert [r.path for r in server.requests] == [V3, V3]
    assert server.oauth.assertions == 2


def test_a_provider_error_on_a_refresh_keeps_the_grant(
    server: FakeFeishu, provider: Recording
) -> None:
    oauth = FeishuOAuth(requests.Session(), timeout=(1.0, 2.0))
    code = server.oauth.issue_code(KEYLESS, REDIRECT)
    tokens = oauth.exchange_code(
        keyless(server, provider), code=code, redirect_uri=REDIRECT, code_verifier=None
    )
    assert tokens.refresh_token is not None
    broken = keyless(server, raising(OSError("HSM unreachable")))
    with pytest.raises(actors.AuthError) as info:
        oauth.refresh(broken, tokens.refresh_token, user="ou_alice")
    assert info.value.code == 7102 and "HSM" not in str(info.value)
    assert server.oauth.rotations() == 0 and server.oauth.grant_alive("ou_alice")
    oauth.refresh(keyless(server, provider), tokens.refresh_token, user="ou_alice")
    assert server.oauth.rotations() == 1


# --- through a running system -------------------------------------------------------------------


def test_a_hundred_gets_call_the_provider_once_and_a_prewarm_once_more(
    make_system: SystemFactory,
    server: FakeFeishu,
    provider: Recording,
    clock: actors.ManualClock,
) -> None:
    system = make_system(keyless(server, provider))
    tokens = {system.proxy.get_token().get(timeout=TIMEOUT) for _ in range(100)}
    assert len(tokens) == 1 and len(provider.made) == 1
    assert server.oauth.assertions == 1
    # The prewarm, in the last 30 minutes of the token: one more request, one more assertion.
    first = tokens.pop()
    while len(provider.made) == 1:
        due = system.next_due()
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
        system.settle()
    assert len(provider.made) == 2 and server.oauth.assertions == 2
    fresh = system.proxy.get_token().get(timeout=TIMEOUT)
    assert fresh != first and server.valid_token(fresh)
    assert system.metrics().prewarms == 1
    # Called on a fetch worker, never on the caller's thread or an actor's.
    assert all(name.startswith("actors-") for name in provider.threads), provider.threads
    host = server.base_url.removeprefix("http://")
    assert provider.inner.audiences == (host, host)


def test_a_provider_error_fails_that_attempt_with_an_auth_error_and_the_next_get_asks_again(
    make_system: SystemFactory, server: FakeFeishu
) -> None:
    calls: list[str] = []

    def provider(aud: str) -> str:
        calls.append(aud)
        raise RuntimeError("could not read /run/keys/feishu.pem: -----BEGIN PRIVATE KEY-----")

    system = make_system(keyless(server, provider), max_attempts=5)
    for attempt in (1, 2):
        with pytest.raises(actors.AuthError) as info:
            system.proxy.get_token().get(timeout=TIMEOUT)
        assert len(calls) == attempt  # not retried within the refresh
        assert "RuntimeError" in str(info.value) and "BEGIN" not in str(info.value)
    health = system.health()
    assert health.last_refresh_error is not None and "feishu.pem" not in repr(health)
    assert server.requests == []


def test_no_assertion_appears_in_logs_reprs_or_errors(
    make_system: SystemFactory,
    server: FakeFeishu,
    provider: Recording,
    clock: actors.ManualClock,
    log: list[str],
) -> None:
    app = keyless(server, provider)
    system = make_system(app, fast_reads=False)
    said: list[str] = [repr(app), str(app)]
    token = system.proxy.get_token().get(timeout=TIMEOUT)
    code = server.oauth.issue_code(KEYLESS, REDIRECT, user="ou_alice")
    grant = system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
    said += [repr(grant), repr(system.users())]
    user_token = system.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)
    assert system.proxy.invalidate(user_token).get(timeout=TIMEOUT)
    system.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)  # a rotation
    assert system.proxy.invalidate(token).get(timeout=TIMEOUT)
    # Feishu refuses the next one, echoing the request it was sent.
    server.script("user", Reply.raw(b'{"code": 20002, "error": "invalid_client"}', status=400))
    with pytest.raises(actors.AuthError) as refused:
        system.proxy.get_token().get(timeout=TIMEOUT)
    said += [str(refused.value), repr(refused.value)]
    run_for(system, clock, 7200.0)
    said += [repr(system.health()), system.performance_report(), repr(system.metrics())]
    assert server.oauth.rotations("ou_alice") >= 1 and len(provider.made) >= 5
    assert log  # the TRACE lines were written
    text = "\n".join(said + log)
    for assertion in provider.made:
        for part in assertion.split(".")[1:]:  # the claims and the signature
            assert part not in text


def test_a_keyless_app_logs_users_in_and_rotates_their_grants(
    make_system: SystemFactory,
    server: FakeFeishu,
    provider: Recording,
    clock: actors.ManualClock,
) -> None:
    system = make_system(keyless(server, provider))
    code = server.oauth.issue_code(KEYLESS, REDIRECT, user="ou_alice")
    grant = system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
    assert (grant.app_id, grant.open_id) == (KEYLESS, "ou_alice")
    seen = {system.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT)}
    for _ in range(3):
        run_for(system, clock, 7200.0 - 300.0)
        seen.add(system.proxy.get_token(USER, user="ou_alice").get(timeout=TIMEOUT))
    assert server.oauth.rotations("ou_alice") >= 3 and len(seen) >= 3
    assert server.oauth.refresh_reuses == 0 and server.oauth.refused_assertions == 0
    # One assertion per token request: the login, each rotation (no tenant token was asked).
    user_requests = [r for r in server.oauth.redemptions if r.grant_type != JWT_BEARER]
    assert server.oauth.assertions == len(provider.made) == len(user_requests)
    assert all(r.code == 0 for r in server.oauth.redemptions)


def test_the_app_token_of_a_keyless_app_is_refused_with_value_error(
    make_system: SystemFactory, server: FakeFeishu, provider: Recording
) -> None:
    system = make_system(keyless(server, provider))
    with pytest.raises(ValueError, match="keyless"):
        system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)
    assert provider.made == [] and server.requests == []


def test_an_ec_key_signs_es256_assertions_the_fake_accepts(
    make_system: SystemFactory, server: FakeFeishu, clock: actors.ManualClock
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    server.add_app("cli_ec", public_key=ec_key.public_key())
    signer = assertion_provider(ec_key, "cli_ec", clock=clock)
    app = actors.AppConfig("cli_ec", client_assertion=signer, base_url=server.base_url)
    token = make_system(app).proxy.get_token().get(timeout=TIMEOUT)
    assert server.valid_token(token) and signer.calls == 1
