"""Event callbacks: decryption, signature and token checks, challenge, app_ticket routing,
replays, the app an endpoint serves, and malformed bodies of every kind."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any, Literal

import pykka
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actors
from actors.callbacks import _SEEN_MAX, _Ledger, _TicketEvent
from actors.testing import (
    EventPusher,
    FunctionSource,
    app_ticket_event,
    encrypt_event,
    sign_event,
)

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
    timestamp, nonce = str(int(time.time())), "nonce-42"
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
    yield "wrong key", raw, signed(raw), "another-key"
    yield "no key for an encrypted body", raw, None, None
    yield "no headers with an encrypt key", raw, None, ENCRYPT_KEY
    yield "no signature headers", raw, {"Content-Type": "application/json"}, ENCRYPT_KEY
    short = json.dumps({"encrypt": base64.b64encode(os.urandom(20)).decode()}).encode()
    yield "truncated ciphertext", short, signed(short), ENCRYPT_KEY
    bad_b64 = json.dumps({"encrypt": "%%%not-base64%%%"}).encode()
    yield "invalid base64", bad_b64, signed(bad_b64), ENCRYPT_KEY
    blocks = json.dumps({"encrypt": base64.b64encode(os.urandom(48)).decode()}).encode()
    yield "bad padding", blocks, signed(blocks), ENCRYPT_KEY  # random blocks: padding fails
    yield "bad signature", raw, signed(raw, **{"X-Lark-Signature": "0" * 64}), ENCRYPT_KEY
    yield "signature headers missing", raw, {"X-Lark-Request-Nonce": "n"}, ENCRYPT_KEY
    yield "tampered body", raw + b" ", signed(raw), ENCRYPT_KEY
    wrong_token = encrypt(ticket_v1(token="nope"))
    yield "wrong verification token", wrong_token, signed(wrong_token), ENCRYPT_KEY
    no_ticket = encrypt({**ticket_v1(), "event": {"type": "app_ticket"}})
    yield "ticket missing", no_ticket, signed(no_ticket), ENCRYPT_KEY


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


def assert_no_ticket_was_fed(system: actors.TokenSystem, *, app_id: str | None = None) -> None:
    """Without a ticket the app token waits for one, then fails: it never comes back."""
    future = system.proxy.get_token(actors.TokenKind.APP, app_id=app_id)
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


# --- replays: the signed timestamp, deliveries seen before, the order of tickets ---------------

PUSHER = EventPusher(
    "http://127.0.0.1:9/unused", verification_token=VERIFY, encrypt_key=ENCRYPT_KEY
)
DAY = 86400.0


def feed(system: Any, raw: bytes | str, headers: dict[str, str], **options: Any) -> Any:
    return actors.handle_event(
        system,
        raw,
        headers=headers,
        verification_token=VERIFY,
        encrypt_key=ENCRYPT_KEY,
        **options,
    )


def ticket_in_use(system: actors.TokenSystem) -> str:
    """The ticket the system's next app token fetch carries (this source grants ``a-<ticket>``)."""
    system.proxy.invalidate(app_token(system)).get(timeout=5)
    return app_token(system).removeprefix("a-")


def push(payload: dict[str, Any], *, timestamp: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A delivery of ``payload`` as Feishu makes it: encrypted, then signed."""
    raw = encrypt_event(payload, ENCRYPT_KEY)
    return raw, sign_event(raw, ENCRYPT_KEY, timestamp=timestamp)


def test_a_genuine_delivery_signed_three_days_ago_is_refused_and_feeds_nothing(
    system: actors.TokenSystem,
) -> None:
    raw, _ = PUSHER.body(MARKET.app_id, "dead-ticket")
    three_days_ago = str(int(time.time() - 3 * DAY))
    headers = sign_event(raw, ENCRYPT_KEY, timestamp=three_days_ago)  # as Feishu signed it then

    with pytest.raises(actors.EventError, match="replay window"):
        feed(system, raw, headers)

    assert_no_ticket_was_fed(system)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(300, True), (-300, True), (301, False), (-301, False)],
    ids=["300s-late", "300s-early", "301s-late", "301s-early"],
)
def test_the_replay_window_is_300_seconds_either_side_of_the_signed_timestamp(
    system: actors.TokenSystem, offset: int, accepted: bool
) -> None:
    signed_at = 1_700_000_000
    raw, headers = push(ticket_v1(), timestamp=str(signed_at))

    def handle() -> Any:
        return feed(system, raw, headers, now=lambda: signed_at + offset)

    if accepted:
        assert handle() == {}
        assert app_token(system) == "a-ticket-1"
    else:
        with pytest.raises(actors.EventError, match="replay window"):
            handle()


def test_replay_window_is_an_option(system: actors.TokenSystem) -> None:
    raw, headers = PUSHER.body(MARKET.app_id, "day-old")
    tomorrow = time.time() + DAY

    assert feed(system, raw, headers, now=lambda: tomorrow, replay_window=2 * DAY) == {}
    assert app_token(system) == "a-day-old"


def test_a_replayed_delivery_is_acknowledged_and_feeds_nothing(system: actors.TokenSystem) -> None:
    first = PUSHER.body(MARKET.app_id, "ticket-old")
    assert feed(system, *first) == {}
    assert feed(system, *PUSHER.body(MARKET.app_id, "ticket-new")) == {}

    assert feed(system, *first) == {}  # the same bytes and headers, sent again
    assert feed(system, *first) == {}

    assert ticket_in_use(system) == "ticket-new"


def test_a_redelivery_of_an_event_is_recognised_by_its_id_even_without_a_creation_time(
    system: actors.TokenSystem,
) -> None:
    # Feishu delivers at least once: a redelivery is a new request (new nonce and signature)
    # carrying the same event.
    old = app_ticket_event(MARKET.app_id, "ticket-old", verification_token=VERIFY)
    del old["ts"]
    raw = encrypt_event(old, ENCRYPT_KEY)
    assert feed(system, raw, sign_event(raw, ENCRYPT_KEY, nonce="first")) == {}
    assert feed(system, *PUSHER.body(MARKET.app_id, "ticket-new")) == {}

    assert feed(system, raw, sign_event(raw, ENCRYPT_KEY, nonce="second")) == {}

    assert ticket_in_use(system) == "ticket-new"


def events_made_at(schema: Literal["1.0", "2.0"], *seconds: float) -> list[dict[str, Any]]:
    events = []
    for n, at in enumerate(seconds):
        event = app_ticket_event(
            MARKET.app_id, f"ticket-made-at-{at:g}-{n}", verification_token=VERIFY, schema=schema
        )
        if schema == "1.0":
            event["ts"] = f"{at:.6f}"
        else:
            event["header"]["create_time"] = str(int(at * 1000))
        events.append(event)
    return events


@pytest.mark.parametrize("schema", ["1.0", "2.0"])
def test_a_ticket_made_earlier_never_replaces_one_made_later(
    system: actors.TokenSystem, schema: Literal["1.0", "2.0"]
) -> None:
    made = time.time() - 60
    newer, older = events_made_at(schema, made, made - 10)

    assert feed(system, *push(newer)) == {}
    assert feed(system, *push(older)) == {}  # a distinct event, delivered later: still older

    assert ticket_in_use(system) == newer["event"]["app_ticket"]
    [later] = events_made_at(schema, made + 1)
    assert feed(system, *push(later)) == {}
    assert ticket_in_use(system) == later["event"]["app_ticket"]


@pytest.mark.parametrize("schema", ["1.0", "2.0"])
def test_the_events_creation_time_reaches_the_system_with_its_ticket_in_seconds(
    system: actors.TokenSystem, schema: Literal["1.0", "2.0"]
) -> None:
    made = float(int(time.time()) - 60)
    [event] = events_made_at(schema, made)
    assert feed(system, *push(event)) == {}

    # Handed over some other way (another endpoint, a store's copy): ordered by the same time.
    system.proxy.set_app_ticket("made-a-second-earlier", made_at=made - 1).get(timeout=5)
    assert ticket_in_use(system) == event["event"]["app_ticket"]
    system.proxy.set_app_ticket("made-a-second-later", made_at=made + 1).get(timeout=5)
    assert ticket_in_use(system) == "made-a-second-later"


def test_a_ticket_event_dated_in_the_future_is_refused(system: actors.TokenSystem) -> None:
    [ahead] = events_made_at("2.0", time.time() + DAY)

    with pytest.raises(actors.EventError, match="future"):
        feed(system, *push(ahead))

    assert_no_ticket_was_fed(system)


def test_the_memory_of_deliveries_is_bounded_in_size_and_time() -> None:
    ledger = _Ledger()
    start = 1_700_000_000.0
    for n in range(3 * _SEEN_MAX):
        event = _TicketEvent("cli_ev", f"t-{n}", f"event-{n}", None)
        assert ledger.admit(event, None, at=start + n * 1e-3, window=300.0) is not None
    assert len(ledger.seen) == _SEEN_MAX

    late = _TicketEvent("cli_ev", "t", "event-late", None)
    ledger.admit(late, None, at=start + 1000.0, window=300.0)
    assert len(ledger.seen) == 1  # every earlier one outlived the window


class _FailingOnce:
    """A system whose first set_app_ticket fails (a stopped actor, a timeout)."""

    def __init__(self) -> None:
        self.apps = {MARKET.app_id: MARKET}
        self.proxy = self
        self.fed: list[str] = []

    def set_app_ticket(
        self, ticket: str, *, app_id: str | None = None, made_at: float | None = None
    ) -> pykka.Future[None]:
        future: pykka.Future[None] = pykka.ThreadingFuture()
        if self.fed or ticket != "first-try":
            future.set(None)
        else:
            future.set_exception((actors.SystemStoppedError, actors.SystemStoppedError(), None))
        self.fed.append(ticket)
        return future


def test_a_delivery_that_could_not_be_fed_is_fed_when_feishu_delivers_it_again() -> None:
    system = _FailingOnce()
    delivery = PUSHER.body(MARKET.app_id, "first-try")

    with pytest.raises(actors.SystemStoppedError):
        feed(system, *delivery)
    assert feed(system, *delivery) == {}

    assert system.fed == ["first-try", "first-try"]


# --- who may feed a ticket ---------------------------------------------------------------------


def test_without_token_or_encrypt_key_an_app_ticket_is_refused_unless_allowed(
    system: actors.TokenSystem,
) -> None:
    forged = json.dumps(ticket_v1("forged"))

    with pytest.raises(actors.EventError, match="allow_unverified"):
        actors.handle_event(system, forged)
    assert_no_ticket_was_fed(system)

    assert actors.handle_event(system, forged, allow_unverified=True) == {}
    assert app_token(system) == "a-forged"


def test_the_url_check_and_other_events_need_no_opt_in(system: actors.TokenSystem) -> None:
    check = {"type": "url_verification", "challenge": "ch-1"}
    assert actors.handle_event(system, json.dumps(check)) == {"challenge": "ch-1"}
    other = {"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}}
    assert actors.handle_event(system, other) == {}


def test_with_an_encrypt_key_but_no_headers_the_event_is_refused_asking_for_them(
    system: actors.TokenSystem,
) -> None:
    raw, _ = PUSHER.body(MARKET.app_id, "unchecked")

    with pytest.raises(actors.EventError, match="headers="):
        actors.handle_event(system, raw, verification_token=VERIFY, encrypt_key=ENCRYPT_KEY)

    assert_no_ticket_was_fed(system)


def test_allow_unverified_accepts_an_encrypted_event_whose_signature_was_checked_elsewhere(
    system: actors.TokenSystem,
) -> None:
    raw, _ = PUSHER.body(MARKET.app_id, "from-the-gateway")
    parsed = json.loads(raw)

    answer = actors.handle_event(
        system, parsed, verification_token=VERIFY, encrypt_key=ENCRYPT_KEY, allow_unverified=True
    )

    assert answer == {}
    assert app_token(system) == "a-from-the-gateway"


def test_a_wrong_signature_is_refused_even_when_unverified_events_are_allowed(
    system: actors.TokenSystem,
) -> None:
    raw, headers = PUSHER.body(MARKET.app_id, "tampered")

    with pytest.raises(actors.EventError, match="signature"):
        feed(system, raw + b" ", headers, allow_unverified=True)


def test_the_signature_is_checked_before_anything_is_decrypted(system: actors.TokenSystem) -> None:
    # Random blocks fail to decrypt: refused for the signature, they were never decrypted.
    blocks = json.dumps({"encrypt": base64.b64encode(os.urandom(48)).decode()}).encode()
    headers = signed(blocks, **{"X-Lark-Signature": "0" * 64})

    with pytest.raises(actors.EventError, match="signature") as info:
        feed(system, blocks, headers)

    assert "before decrypting" in str(info.value)


def test_unsigned_callbacks_are_refused_alike_whatever_they_decrypt_to(
    system: actors.TokenSystem,
) -> None:
    # No padding oracle: a stranger's bytes get the same answer whether they decrypt or not.
    blocks = json.dumps({"encrypt": base64.b64encode(os.urandom(48)).decode()}).encode()
    genuine, _ = PUSHER.body(MARKET.app_id, "unsigned")
    answers = []
    for body in (blocks, genuine, encrypt({"type": "nope"})):
        with pytest.raises(actors.EventError) as info:
            feed(system, body, {})
        answers.append(str(info.value))

    assert len(set(answers)) == 1, answers
    assert_no_ticket_was_fed(system)


TWO = (
    actors.AppConfig("cli_a", "secret-a", app_type=actors.AppType.MARKETPLACE),
    actors.AppConfig("cli_b", "secret-b", app_type=actors.AppType.MARKETPLACE),
)


@pytest.fixture
def two_apps() -> Iterator[actors.TokenSystem]:
    source = FunctionSource(lambda request: actors.Grant(f"a-{request.app_ticket}", 7200.0))
    with actors.TokenSystem.start(TWO, source=source, clock=actors.ManualClock()) as started:
        yield started


def test_app_as_keys_cannot_set_app_bs_ticket(two_apps: actors.TokenSystem) -> None:
    a, b = (app.app_id for app in TWO)
    # An endpoint with app A's keys, bound to A, receives an event naming B, signed with A's keys.
    delivery = PUSHER.body(b, "b-ticket-from-a")

    with pytest.raises(actors.EventError, match="names app 'cli_b'"):
        feed(two_apps, *delivery, app_id=a)

    assert feed(two_apps, *PUSHER.body(a, "a-ticket"), app_id=a) == {}
    assert two_apps.proxy.get_token(actors.TokenKind.APP, app_id=a).get(timeout=5) == "a-a-ticket"
    assert_no_ticket_was_fed(two_apps, app_id=b)


def test_with_several_marketplace_apps_the_endpoint_must_say_which_app_it_serves(
    two_apps: actors.TokenSystem,
) -> None:
    with pytest.raises(actors.EventError, match="app_id="):
        feed(two_apps, *PUSHER.body(TWO[1].app_id, "whose"))


def test_an_event_for_an_app_the_system_does_not_serve_is_an_event_error(
    system: actors.TokenSystem,
) -> None:
    with pytest.raises(actors.EventError, match="names app 'cli_other'"):
        feed(system, *PUSHER.body("cli_other", "elsewhere"))
    assert_no_ticket_was_fed(system)


def test_a_v2_event_whose_header_and_body_name_different_apps_is_refused(
    system: actors.TokenSystem,
) -> None:
    event = app_ticket_event(MARKET.app_id, "mixed", verification_token=VERIFY, schema="2.0")
    event["header"]["app_id"] = "cli_other"

    with pytest.raises(actors.EventError, match="cli_other"):
        feed(system, *push(event))


def test_app_id_binds_other_events_too(system: actors.TokenSystem) -> None:
    other = {"schema": "2.0", "header": {"event_type": "im.message.receive_v1", "app_id": "x"}}
    with pytest.raises(actors.EventError, match="names app 'x'"):
        actors.handle_event(system, other, app_id=MARKET.app_id)


def test_app_id_must_be_one_of_the_systems_apps(system: actors.TokenSystem) -> None:
    with pytest.raises(ValueError, match="not one of the system's apps") as info:
        actors.handle_event(system, ticket_v1(), verification_token=VERIFY, app_id="cli_nope")
    assert not isinstance(info.value, actors.EventError)  # a caller's mistake, not a bad event


# --- malformed bodies of any kind are EventErrors -----------------------------------------------


def malformed() -> Iterator[tuple[str, object]]:
    yield "deep nesting", b"[" * 100_000
    yield "deep nesting in an object", b'{"a":' * 50_000
    yield "a lone surrogate in a str body", '{"token": "\ud800"}'
    yield "an escaped lone surrogate", b'{"token": "\\ud800", "type": "event_callback"}'
    yield "a list of ints", [1, 2, 300]
    yield "an int", 10**6
    yield "None", None
    yield "over 1 MiB", b" " * ((1 << 20) + 1)
    yield "a str of over 1 MiB characters", " " * ((1 << 20) + 1)
    yield "a memoryview over 1 MiB", memoryview(bytes((1 << 20) + 8)).cast("Q")
    yield "UTF-16 garbage", "{}".encode("utf-16")[:-1]
    yield "a huge integer", b'{"ts": ' + b"9" * 10_000 + b"}"


@pytest.mark.parametrize("body", [case[1] for case in malformed()], ids=[c[0] for c in malformed()])
def test_a_malformed_body_is_an_event_error(system: actors.TokenSystem, body: object) -> None:
    with pytest.raises(actors.EventError):
        actors.handle_event(system, body, verification_token=VERIFY)  # type: ignore[arg-type]


def test_a_deeply_nested_encrypted_payload_is_an_event_error(system: actors.TokenSystem) -> None:
    raw = encrypt_raw(b"[" * 100_000)

    with pytest.raises(actors.EventError, match="nested"):
        feed(system, raw, signed(raw))


def test_a_ticket_with_control_characters_is_refused(system: actors.TokenSystem) -> None:
    with pytest.raises(actors.EventError, match="control characters"):
        feed(system, *PUSHER.body(MARKET.app_id, "tick\r\net"))


def encrypt_raw(plain: bytes, key: str = ENCRYPT_KEY) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    cipher = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv))
    encryptor = cipher.encryptor()
    padded = padder.update(plain) + padder.finalize()
    data = iv + encryptor.update(padded) + encryptor.finalize()
    return json.dumps({"encrypt": base64.b64encode(data).decode()}).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None)),  # lone surrogates included
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
interesting_keys = st.sampled_from(
    ["type", "token", "event", "schema", "header", "encrypt", "challenge", "uuid", "ts"]
)
payloads = st.dictionaries(interesting_keys, json_values) | st.dictionaries(
    interesting_keys,
    st.dictionaries(
        st.sampled_from(["type", "app_id", "app_ticket", "event_type", "token", "create_time"]),
        json_values,
    ),
)


def as_body(draw: st.DrawFn) -> tuple[object, dict[str, str] | None, dict[str, Any]]:
    """A body of some kind, with or without signature headers, and the options to handle it."""
    value = draw(payloads | json_values)
    form = draw(st.sampled_from(["dict", "json", "bytes", "encrypted", "str-bytes"]))
    options: dict[str, Any] = draw(
        st.sampled_from(
            [
                {"verification_token": VERIFY},
                {"encrypt_key": ENCRYPT_KEY},
                {"allow_unverified": True},
                {"encrypt_key": ENCRYPT_KEY, "allow_unverified": True},
            ]
        )
    )
    headers = None
    body: object = value
    if form == "json":
        body = json.dumps(value)
    elif form == "bytes":
        body = draw(st.binary(max_size=256))
    elif form == "str-bytes":
        body = draw(st.text(st.characters(codec=None), max_size=64))
    elif form == "encrypted":
        plain = json.dumps(value).encode(errors="surrogatepass")
        body = encrypt_raw(plain)
        headers = signed(body)
    return body, headers, options


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=st.composite(as_body)())
def test_any_body_is_answered_or_refused_with_an_event_error(
    system: actors.TokenSystem, case: tuple[object, dict[str, str] | None, dict[str, Any]]
) -> None:
    body, headers, options = case
    try:
        answer = actors.handle_event(system, body, headers=headers, **options)  # type: ignore[arg-type]
    except actors.EventError:
        return
    assert isinstance(answer, dict)
    json.dumps(answer).encode()  # an answer the endpoint can always send


# --- the size limit -----------------------------------------------------------------------------


def test_max_body_bounds_the_raw_body_before_it_is_parsed(system: actors.TokenSystem) -> None:
    raw, headers = PUSHER.body(MARKET.app_id, "sized")

    with pytest.raises(actors.EventError, match="too large"):
        feed(system, raw, headers, max_body=len(raw) - 1)
    with pytest.raises(actors.EventError, match="too large"):
        feed(system, raw.decode(), headers, max_body=len(raw) - 1)
    assert feed(system, raw, headers, max_body=len(raw)) == {}
    assert app_token(system) == "a-sized"


@pytest.mark.parametrize("max_body", [0, -1, 1.5, True])
def test_max_body_must_be_a_positive_int(system: actors.TokenSystem, max_body: object) -> None:
    with pytest.raises(ValueError, match="max_body"):
        actors.handle_event(system, b"{}", max_body=max_body)  # type: ignore[arg-type]
