"""Tests of the fake server's keyless apps: client assertions (RFC 7523 JWTs) verified on the v3
token endpoint, the jwt-bearer tenant grant, and the test helper that signs them; driven over
loopback HTTP with ``requests`` and keys made here (``docs/feishu-protocol.md``, "Keyless
apps")."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from actors._clock import ManualClock
from actors.testing import FakeFeishu, assertion_provider
from actors.testing._assertions import PrivateKey, sign_assertion

KEYLESS, EC_APP, SECRET_APP = "cli_keyless", "cli_keyless_ec", "cli_secret"
SECRET = "s3cr3t-app-secret-value"
V3 = "/oauth/v3/token"
V2 = "/open-apis/authen/v2/oauth/token"
TENANT_INTERNAL = "/open-apis/auth/v3/tenant_access_token/internal"
CHATS = "/open-apis/im/v1/chats"
REDIRECT = "http://127.0.0.1:8000/callback"
# Written out here rather than taken from the fake or the client: RFC 7523's names.
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def server(
    clock: ManualClock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Iterator[FakeFeishu]:
    # The RSA app's key as a key object, the EC app's as PEM: add_app takes both.
    pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(KEYLESS, public_key=rsa_key.public_key())
        fake.add_app(EC_APP, public_key=pem.decode())
        fake.add_app(SECRET_APP, SECRET)
        fake.oauth.add_user("ou_alice")
        yield fake


def audience(server: FakeFeishu) -> str:
    return server.base_url.removeprefix("http://")


def claims(server: FakeFeishu, clock: ManualClock, app_id: str = KEYLESS, **changes: Any) -> Any:
    now = int(clock.wall())
    made = {"iss": app_id, "sub": app_id, "aud": audience(server), "iat": now, "exp": now + 300}
    made |= {"jti": f"jti-{now}-{sorted(changes.items())!r}"}
    return {k: v for k, v in (made | changes).items() if v is not None}


def post(server: FakeFeishu, body: Mapping[str, object], path: str = V3) -> requests.Response:
    return requests.post(server.base_url + path, json=body, timeout=TIMEOUT)


def tenant_grant(server: FakeFeishu, assertion: str, app_id: str = KEYLESS) -> requests.Response:
    body = {"grant_type": JWT_BEARER, "client_id": app_id}
    return post(
        server, body | {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    )


def refused(response: requests.Response, code: int = 20002) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code
    assert body["error"] == ("invalid_client" if code == 20002 else "invalid_request")
    return str(body["error_description"])


def payload_of(assertion: str) -> Any:
    part = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize("app_id", [KEYLESS, EC_APP], ids=["RS256", "ES256"])
def test_a_keyless_app_gets_a_tenant_token_for_a_valid_assertion_signed_rs256_or_es256(
    server: FakeFeishu,
    clock: ManualClock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    app_id: str,
) -> None:
    key: PrivateKey = rsa_key if app_id == KEYLESS else ec_key
    response = tenant_grant(server, sign_assertion(key, claims(server, clock, app_id)), app_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["code"], body["expires_in"], body["token_type"]) == (0, 7200, "Bearer")
    assert "refresh_token" not in body and "scope" not in body
    assert server.valid_token(body["access_token"])
    chats = requests.get(
        server.base_url + CHATS,
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=TIMEOUT,
    )
    assert chats.json()["code"] == 0  # a tenant token the business routes accept
    assert (server.oauth.assertions, server.oauth.refused_assertions) == (1, 0)
    last = server.oauth.redemptions[-1]
    assert (last.path, last.app_id, last.grant_type, last.code) == (V3, app_id, JWT_BEARER, 0)


def test_the_jwt_bearer_grant_follows_the_same_token_rule_as_the_secret_endpoint(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    first = tenant_grant(server, sign_assertion(rsa_key, claims(server, clock))).json()
    clock.advance(600)
    again = tenant_grant(server, sign_assertion(rsa_key, claims(server, clock))).json()
    assert again["access_token"] == first["access_token"]  # 30 minutes or more remain
    assert again["expires_in"] == 7200 - 600
    clock.advance(5400)
    fresh = tenant_grant(server, sign_assertion(rsa_key, claims(server, clock))).json()
    assert fresh["access_token"] != first["access_token"]


def test_every_broken_claim_or_signature_is_refused_with_20002_and_counted(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wall = int(clock.wall())
    cases = {
        "another key": sign_assertion(other, claims(server, clock)),
        "alg none": sign_assertion(rsa_key, claims(server, clock), header={"alg": "none"}),
        "alg HS256": sign_assertion(rsa_key, claims(server, clock), header={"alg": "HS256"}),
        "iss": sign_assertion(rsa_key, claims(server, clock, iss="cli_other")),
        "sub": sign_assertion(rsa_key, claims(server, clock, sub="cli_other")),
        "aud": sign_assertion(rsa_key, claims(server, clock, aud="accounts.feishu.cn")),
        "aud missing": sign_assertion(rsa_key, claims(server, clock, aud=None)),
        "expired": sign_assertion(rsa_key, claims(server, clock, exp=wall)),
        "longer than an hour": sign_assertion(rsa_key, claims(server, clock, exp=wall + 3601)),
        "iat in the future": sign_assertion(rsa_key, claims(server, clock, iat=wall + 1)),
        "nbf in the future": sign_assertion(rsa_key, claims(server, clock, nbf=wall + 1)),
        "exp not a number": sign_assertion(rsa_key, claims(server, clock, exp="soon")),
        "iat missing": sign_assertion(rsa_key, claims(server, clock, iat=None)),
        "jti missing": sign_assertion(rsa_key, claims(server, clock, jti=None)),
        "not a JWS": "not-a-jwt",
        "four parts": sign_assertion(rsa_key, claims(server, clock)) + ".x",
    }
    for case, assertion in cases.items():
        assert refused(tenant_grant(server, assertion)), case
    assert server.oauth.refused_assertions == len(cases)
    assert server.oauth.assertions == 0
    # Nothing was consumed: a good assertion still works.
    good = tenant_grant(server, sign_assertion(rsa_key, claims(server, clock)))
    assert good.status_code == 200
    assert server.oauth.assertions == 1


def test_an_assertion_is_accepted_once_and_a_replay_is_refused(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    assertion = sign_assertion(rsa_key, claims(server, clock))
    assert tenant_grant(server, assertion).status_code == 200
    assert "used already" in refused(tenant_grant(server, assertion))
    assert (server.oauth.assertions, server.oauth.refused_assertions) == (1, 1)


def test_exp_and_iat_are_read_on_the_servers_clock(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    wall = int(clock.wall())
    stale = sign_assertion(rsa_key, claims(server, clock, exp=wall + 60, jti="stale"))
    early = sign_assertion(rsa_key, claims(server, clock, iat=wall + 60, jti="early"))
    assert "not valid yet" in refused(tenant_grant(server, early))
    clock.advance(120)
    assert "expired" in refused(tenant_grant(server, stale))
    assert tenant_grant(server, early).status_code == 200  # its iat is no longer ahead


def test_the_jti_of_one_app_does_not_spend_another_apps(
    server: FakeFeishu,
    clock: ManualClock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    mine = sign_assertion(rsa_key, claims(server, clock, jti="shared-jti"))
    theirs = sign_assertion(ec_key, claims(server, clock, EC_APP, jti="shared-jti"))
    assert tenant_grant(server, mine).status_code == 200
    assert tenant_grant(server, theirs, EC_APP).status_code == 200


def test_a_keyless_app_logs_a_user_in_and_rotates_with_assertions_instead_of_a_secret(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    provider = assertion_provider(rsa_key, KEYLESS, clock=clock)
    client = {"client_id": KEYLESS, "client_assertion_type": ASSERTION_TYPE}
    code = server.oauth.issue_code(KEYLESS, REDIRECT, user="ou_alice")
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    login = post(server, client | grant | {"client_assertion": provider(audience(server))})
    assert login.status_code == 200, login.text
    refresh = {"grant_type": "refresh_token", "refresh_token": login.json()["refresh_token"]}
    rotated = post(server, client | refresh | {"client_assertion": provider(audience(server))})
    assert rotated.status_code == 200, rotated.text
    assert server.oauth.rotations("ou_alice") == 1
    assert server.oauth.assertions == 2


def test_a_keyless_app_has_no_secret_that_works(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    secretless = {"app_id": KEYLESS, "app_secret": ""}
    assert post(server, secretless, TENANT_INTERNAL).json()["code"] == 10014
    assert post(server, {"app_id": KEYLESS}, TENANT_INTERNAL).json()["code"] == 10014
    code = server.oauth.issue_code(KEYLESS, REDIRECT)
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    refused(post(server, {"client_id": KEYLESS, "client_secret": ""} | grant))
    refused(post(server, {"client_id": KEYLESS} | grant))


def test_assertions_are_refused_where_they_do_not_belong(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    good = claims(server, clock)
    # An app without a registered key, the v2 endpoint, a secret beside the assertion, a wrong
    # or missing assertion type, and the jwt-bearer grant without any assertion.
    secret_app = sign_assertion(rsa_key, claims(server, clock, SECRET_APP))
    assert "no public key" in refused(tenant_grant(server, secret_app, SECRET_APP))
    body = {"grant_type": JWT_BEARER, "client_id": KEYLESS, "client_assertion_type": ASSERTION_TYPE}
    v2 = post(server, body | {"client_assertion": sign_assertion(rsa_key, good)}, V2)
    assert "/oauth/v3/token only" in refused(v2)
    both = body | {"client_secret": SECRET, "client_assertion": sign_assertion(rsa_key, good)}
    refused(post(server, both), code=20001)
    typeless = {"grant_type": JWT_BEARER, "client_id": KEYLESS, "client_assertion": "x.y.z"}
    refused(post(server, typeless), code=20001)
    wrong_type = body | {"client_assertion_type": "jwt", "client_assertion": "x.y.z"}
    refused(post(server, wrong_type), code=20001)
    with_secret = {"grant_type": JWT_BEARER, "client_id": SECRET_APP, "client_secret": SECRET}
    assert "send a client assertion" in refused(post(server, with_secret), code=20001)
    assert server.oauth.assertions == 0


def test_the_jwt_bearer_grant_is_recorded_scripted_and_held_as_user_traffic(
    server: FakeFeishu, clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    gate = server.hold("user", app_id=KEYLESS)
    answers: list[requests.Response] = []
    assertion = sign_assertion(rsa_key, claims(server, clock))
    thread = threading.Thread(target=lambda: answers.append(tenant_grant(server, assertion)))
    thread.start()
    assert gate.wait_for_waiting(1, timeout=TIMEOUT)
    assert answers == []
    gate.release()
    thread.join(TIMEOUT)
    assert answers[0].status_code == 200
    assert server.count("user", app_id=KEYLESS) == 1
    assert all(assertion not in repr(r) for r in server.requests)


def test_add_app_takes_a_secret_a_public_key_or_both_and_refuses_what_it_cannot_verify(
    clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with FakeFeishu(clock=clock) as fake:
        fake.add_app("cli_both", SECRET, public_key=rsa_key.public_key())
        assert post(fake, {"app_id": "cli_both", "app_secret": SECRET}, TENANT_INTERNAL).ok
        both = sign_assertion(rsa_key, claims(fake, clock, "cli_both"))
        assert tenant_grant(fake, both, "cli_both").status_code == 200
        with pytest.raises(ValueError, match="app_secret, public_key or both"):
            fake.add_app("cli_none")
        with pytest.raises(ValueError, match="marketplace"):
            fake.add_app("cli_m", SECRET, marketplace=True, public_key=rsa_key.public_key())
        with pytest.raises(ValueError, match="PEM"):
            fake.add_app("cli_pem", public_key="-----BEGIN NOTHING-----")
        with pytest.raises(ValueError, match="2048"):
            fake.add_app("cli_weak", public_key=weak.public_key())
        p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
        with pytest.raises(ValueError, match="P-256"):
            fake.add_app("cli_p384", public_key=p384)


def test_the_assertion_provider_signs_fresh_claims_for_each_audience_and_hides_its_key(
    clock: ManualClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    provider = assertion_provider(rsa_key, KEYLESS, clock=clock, lifetime=120)
    first, second = provider("accounts.feishu.cn"), provider("127.0.0.1:9")
    one, two = payload_of(first), payload_of(second)
    assert one["iss"] == one["sub"] == KEYLESS
    assert (one["aud"], two["aud"]) == ("accounts.feishu.cn", "127.0.0.1:9")
    assert one["iat"] == int(clock.wall()) and one["exp"] == one["iat"] + 120
    assert one["jti"] != two["jti"]
    assert provider.audiences == ("accounts.feishu.cn", "127.0.0.1:9") and provider.calls == 2
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert KEYLESS in repr(provider) and pem.decode() not in repr(provider)
    assert "RS256" in repr(provider)
    with pytest.raises(ValueError, match="lifetime"):
        assertion_provider(rsa_key, KEYLESS, lifetime=0)
