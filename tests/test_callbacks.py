"""Event callbacks: decryption, signature and token checks, challenge, app_ticket routing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import actors
from actors.testing import FunctionSource

ENCRYPT_KEY = "test-encrypt-key"
VERIFY = "verification-token-123"
MARKET = actors.AppConfig("cli_ev", "secret", app_type=actors.AppType.MARKETPLACE)


# --- the documented scheme, written out here independently of the library ----------------------


def encrypt(payload: dict[str, Any], key: str = ENCRYPT_KEY) -> bytes:
    """{"encrypt": base64(iv + AES-256-CBC(sha256(key), iv, pkcs7(json)))} as raw bytes."""
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(json.dumps(payload).encode()) + padder.finalize()
    cipher = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv))
    encryptor = cipher.encryptor()
    data = iv + encryptor.update(plain) + encryptor.finalize()
    return json.dumps({"encrypt": base64.b64encode(data).decode()}).encode()


def signed(raw: bytes, key: str = ENCRYPT_KEY, **names: str) -> dict[str, str]:
    timestamp, nonce = "1700000000", "nonce-42"
    signature = hashlib.sha256((timestamp + nonce + key).encode() + raw).hexdigest()
    headers = {
        "X-Lark-Request-Timestamp": timestamp,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": signature,
    }
    headers.update(names)
    return headers


def ticket_v1(ticket: str = "ticket-1", token: str = VERIFY) -> dict[str, Any]:
    return {
        "uuid": "u-1",
        "token": token,
        "type": "event_callback",
        "event": {"type": "app_ticket", "app_id": MARKET.app_id, "app_ticket": ticket},
    }


def ticket_v2(ticket: str = "ticket-2", token: str = VERIFY) -> dict[str, Any]:
    return {
        "schema": "2.0",
        "header": {"event_type": "app_ticket", "token": token, "app_id": MARKET.app_id},
        "event": {"app_id": MARKET.app_id, "app_ticket": ticket},
    }


@pytest.fixture
def system() -> Iterator[actors.TokenSystem]:
    def fetch(request: actors.TokenRequest) -> actors.Grant:
        return actors.Grant(f"a-{request.app_ticket}", 7200.0)

    source = FunctionSource(fetch)
    with actors.TokenSystem.start(MARKET, source=source, clock=actors.ManualClock()) as started:
        yield started


def app_token(system: actors.TokenSystem) -> str:
    return system.proxy.get_token(actors.TokenKind.APP).get(timeout=5)


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [ticket_v1(), ticket_v2()], ids=["v1", "v2"])
def test_an_encrypted_signed_app_ticket_reaches_the_system(
    system: actors.TokenSystem, payload: dict[str, Any]
) -> None:
    raw = encrypt(payload)
    answer = actors.handle_event(
        system, raw, headers=signed(raw), verification_token=VERIFY, encrypt_key=ENCRYPT_KEY
    )
    assert answer == {}
    assert app_token(system) == f"a-{payload['event']['app_ticket']}"


def test_header_names_are_case_insensitive_and_asgi_byte_pairs_work(
    system: actors.TokenSystem,
) -> None:
    raw = encrypt(ticket_v1())
    asgi = [(k.lower().encode(), v.encode()) for k, v in signed(raw).items()]
    actors.handle_event(system, raw, headers=asgi, encrypt_key=ENCRYPT_KEY)
    assert app_token(system) == "a-ticket-1"


def test_url_verification_is_answered_with_the_challenge(system: actors.TokenSystem) -> None:
    plain = {"type": "url_verification", "challenge": "ch-123", "token": VERIFY}
    assert actors.handle_event(system, json.dumps(plain), verification_token=VERIFY) == {
        "challenge": "ch-123"
    }
    raw = encrypt(plain)
    answer = actors.handle_event(
        system, raw, verification_token=VERIFY, encrypt_key=ENCRYPT_KEY, headers={}
    )
    assert answer == {"challenge": "ch-123"}


def test_a_plain_dict_body_without_encryption_is_accepted(system: actors.TokenSystem) -> None:
    assert actors.handle_event(system, ticket_v1(), verification_token=VERIFY) == {}
    assert app_token(system) == "a-ticket-1"


def test_other_events_are_acknowledged_and_feed_nothing(system: actors.TokenSystem) -> None:
    other = {"schema": "2.0", "header": {"event_type": "im.message.receive_v1", "token": VERIFY}}
    assert actors.handle_event(system, other, verification_token=VERIFY) == {}
    assert system.metrics().ticket_resends == 0


def bad_cases() -> Iterator[tuple[str, bytes | str, dict[str, str] | None, str | None]]:
    raw = encrypt(ticket_v1())
    yield "garbage bytes", b"\x00\xff not json", None, ENCRYPT_KEY
    yield "a JSON list", b"[1, 2]", None, ENCRYPT_KEY
    yield "wrong key", raw, None, "another-key"
    yield "no key for an encrypted body", raw, None, None
    short = base64.b64encode(os.urandom(20)).decode()
    yield "truncated ciphertext", json.dumps({"encrypt": short}), None, ENCRYPT_KEY
    bad_b64 = json.dumps({"encrypt": "%%%not-base64%%%"})
    yield "invalid base64", bad_b64, None, ENCRYPT_KEY
    blocks = base64.b64encode(os.urandom(48)).decode()  # random blocks: padding fails
    yield "bad padding", json.dumps({"encrypt": blocks}), None, ENCRYPT_KEY
    yield "bad signature", raw, signed(raw, **{"X-Lark-Signature": "0" * 64}), ENCRYPT_KEY
    yield "signature headers missing", raw, {"X-Lark-Request-Nonce": "n"}, ENCRYPT_KEY
    yield "tampered body", raw + b" ", signed(raw), ENCRYPT_KEY
    yield "wrong verification token", encrypt(ticket_v1(token="nope")), None, ENCRYPT_KEY
    yield (
        "ticket missing",
        encrypt({**ticket_v1(), "event": {"type": "app_ticket"}}),
        None,
        (ENCRYPT_KEY),
    )


@pytest.mark.parametrize(
    ("body", "headers", "key"),
    [case[1:] for case in bad_cases()],
    ids=[case[0] for case in bad_cases()],
)
def test_an_untrustworthy_callback_is_a_value_error_and_feeds_nothing(
    system: actors.TokenSystem, body: bytes | str, headers: dict[str, str] | None, key: str | None
) -> None:
    with pytest.raises(actors.EventError) as info:
        actors.handle_event(
            system, body, headers=headers, verification_token=VERIFY, encrypt_key=key
        )
    assert isinstance(info.value, ValueError)
    assert ENCRYPT_KEY not in str(info.value)
    assert_no_ticket_was_fed(system)


def assert_no_ticket_was_fed(system: actors.TokenSystem) -> None:
    """Without a ticket the app token waits for one, then fails: it never comes back."""
    future = system.proxy.get_token(actors.TokenKind.APP)
    system.settle()
    clock = system.clock
    assert isinstance(clock, actors.ManualClock)
    clock.advance(system.policy.ticket_wait)
    system.settle()
    with pytest.raises(actors.AppTicketError):
        future.get(timeout=5)


def test_a_signature_needs_the_raw_body(system: actors.TokenSystem) -> None:
    with pytest.raises(actors.EventError, match="raw body"):
        actors.handle_event(system, ticket_v1(), headers={"X-Lark-Signature": "x"}, encrypt_key="k")
