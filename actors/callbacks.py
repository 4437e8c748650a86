"""Event callbacks: the request Feishu posts to the app's event URL, checked and routed.

Feishu encrypts callback bodies with the app's Encrypt Key (``{"encrypt": base64(iv + AES-256-CBC
ciphertext)}``, key ``sha256(encrypt_key)``, PKCS#7 padding), signs them
(``X-Lark-Signature = sha256(timestamp + nonce + encrypt_key + raw body)``, the timestamp in Unix
seconds) and carries the app's verification token inside the payload. Every event names itself
and the moment it was made: v1 payloads with ``uuid`` and ``ts`` (Unix seconds, a decimal string),
v2 payloads with ``header.event_id`` and ``header.create_time`` (Unix milliseconds). Feishu
delivers at least once and asks receivers to deduplicate by the event id, which a redelivery
keeps (it is a new request: a new nonce, timestamp and signature).

:func:`handle_event` checks all of that, answers the ``url_verification`` challenge, and feeds
``app_ticket`` events to the TokenSystem: a delivery signed too long ago is refused, one seen
before is acknowledged and feeds nothing, and a ticket never replaces one made later. Anything it
cannot trust raises :class:`EventError` (a ``ValueError``) and feeds nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from actors._config import AppType

__all__ = ["EventError", "handle_event"]


_REPLAY_WINDOW = 300.0  # seconds; the tolerance webhook signers commonly give a signed timestamp
_MAX_BODY = 1 << 20  # a callback is a few hundred bytes; a megabyte is an attack or a mistake
_MAX_FIELD = 4096  # characters in a ticket, app id or event id: real ones are under a hundred
_SEEN_MAX = 4096  # deliveries remembered per system; beyond that the oldest are forgotten
_BLOCK = 16
_SIGNED = _TIMESTAMP, _NONCE, _SIGNATURE = (
    "x-lark-request-timestamp",
    "x-lark-request-nonce",
    "x-lark-signature",
)
_UNSIGNED = (
    "an unsigned callback was refused: with an encrypt_key only the url_verification check comes "
    "without X-Lark-Signature"
)


class HeaderItems(Protocol):
    """Anything with ``items()`` of (name, value) pairs: ``http.server``'s ``self.headers`` (an
    ``email.message.Message``, which is not a ``Mapping``), werkzeug's ``Headers``, ..."""

    def items(self) -> Iterable[tuple[Any, Any]]: ...


Headers = Mapping[str, str] | HeaderItems | Iterable[tuple[str | bytes, str | bytes]]


class EventError(ValueError):
    """An event callback that must not be trusted (bad token, signature or payload)."""


def handle_event(
    system: Any,
    body: bytes | str | Mapping[str, Any],
    *,
    headers: Headers | None = None,
    verification_token: str | None = None,
    encrypt_key: str | None = None,
    app_id: str | None = None,
    allow_unverified: bool = False,
    replay_window: float = _REPLAY_WINDOW,
    max_body: int = _MAX_BODY,
    now: Callable[[], float] = time.time,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Check and route one event callback; returns the JSON object to answer with.

    ``body`` is the request's raw bytes (or str, or the already parsed dict: then the signature
    cannot be checked); a raw body over ``max_body`` bytes (default 1 MiB) is refused before it
    is parsed. ``headers`` are the request's headers (names case-insensitive, as ASGI servers
    lower-case them; a mapping, (name, value) pairs, or any object with ``items()`` such as
    ``http.server``'s ``self.headers``).

    With ``encrypt_key``, an event in clear JSON is refused (Feishu then encrypts every
    callback), and the signature is checked before anything is decrypted: pass ``headers``, or
    every callback is refused. Only the ``url_verification`` check may come unsigned. A signed
    delivery whose ``X-Lark-Request-Timestamp`` is more than ``replay_window`` seconds (default
    300) from ``now()`` (Unix seconds, default :func:`time.time`) is refused. With
    ``verification_token`` the payload's token is compared in constant time. With neither an
    ``encrypt_key`` nor a ``verification_token`` nothing proves a callback came from Feishu, and
    app_ticket events are refused unless ``allow_unverified=True``; that option also accepts an
    encrypted event without signature headers (a parsed dict, or an endpoint whose gateway has
    authenticated the request). A signature that is present and wrong is always refused.

    ``url_verification`` is answered with ``{"challenge": ...}``. An ``app_ticket`` event goes to
    ``system.proxy.set_app_ticket`` (waiting up to ``timeout`` seconds) and the answer is ``{}``,
    as for every other event (which this function does not handle). The endpoint serves the app
    ``app_id`` (by default the system's only marketplace app): an event naming another app is
    refused. A ticket event seen before (its event id, or the delivery's nonce, within the replay
    window) or made earlier than the newest ticket this system accepted for the app is
    acknowledged with ``{}`` and feeds nothing.
    """
    _check_options(system, app_id, replay_window, max_body)
    raw, outer = _parse_outer(body, max_body)
    signed: _Delivery | None = None
    payload: Mapping[str, Any] = outer
    if encrypt_key:
        signed = _authenticate(raw, outer, headers, encrypt_key, now=now, window=replay_window)
        if signed is None and not allow_unverified:
            if headers is None:
                raise EventError(
                    "pass the request's headers= to handle_event: with an encrypt_key the "
                    "signature is checked, and it is in X-Lark-Signature"
                )
            payload = _open_unsigned(outer["encrypt"], encrypt_key)
        else:
            payload = _decrypt(outer["encrypt"], encrypt_key)
    elif "encrypt" in outer:
        raise EventError("the event is encrypted but no encrypt_key was given")
    kind, event = _classify(payload)
    if verification_token is not None:
        _verify_token(payload, verification_token)
    if kind == "url_verification":
        return {"challenge": _text(payload.get("challenge"), "url_verification's challenge")}
    named = _named_apps(payload, event)
    if app_id is not None:
        _serves(app_id, named)
    if kind != "app_ticket":
        return {}
    if not (encrypt_key or verification_token or allow_unverified):
        raise EventError(
            "app_ticket refused: with neither encrypt_key nor verification_token anyone can "
            "forge it (pass allow_unverified=True if something else authenticated the request)"
        )
    ticket = _ticket_event(system, payload, event, app_id)
    _feed_ticket(system, ticket, signed=signed, now=now, window=replay_window, timeout=timeout)
    return {}


def _check_options(system: Any, app_id: str | None, replay_window: float, max_body: int) -> None:
    # Caller mistakes, not untrusted input: plain errors, so an endpoint answers 500, not 400.
    if app_id is not None and app_id not in system.apps:
        raise ValueError(f"handle_event: app_id {app_id!r} is not one of the system's apps")
    if not (isinstance(replay_window, int | float) and 0 < replay_window < math.inf):
        raise ValueError(f"handle_event: replay_window must be positive seconds: {replay_window!r}")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ValueError(f"handle_event: max_body must be a positive int: {max_body!r}")


# --- the body, its signature and its encryption ------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    """The signed headers of one delivery."""

    timestamp: int
    nonce: str


def _parse_outer(body: object, max_body: int) -> tuple[bytes | None, Mapping[str, Any]]:
    if isinstance(body, Mapping):
        return None, body
    if isinstance(body, str):
        if len(body) > max_body:  # at least a byte per character: refused before encoding
            raise EventError(f"event body too large ({len(body)} characters)")
        raw = _utf8(body, "event body")
    elif isinstance(body, bytes | bytearray | memoryview):
        size = body.nbytes if isinstance(body, memoryview) else len(body)
        if size > max_body:
            raise EventError(f"event body too large ({size} bytes)")
        raw = bytes(body)
    else:
        raise EventError(f"event body must be bytes, str or a parsed dict: {type(body).__name__}")
    if len(raw) > max_body:
        raise EventError(f"event body too large ({len(raw)} bytes)")
    outer = _json(raw, "event body")
    if not isinstance(outer, dict):
        raise EventError("event body is not a JSON object")
    return raw, outer


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except RecursionError:  # the parser nests once per bracket: a body of brackets ends here
        raise EventError(f"{what} is nested too deeply") from None
    except ValueError:  # includes UnicodeDecodeError and over-long integers
        raise EventError(f"{what} is not JSON") from None


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 sender produced this
        raise EventError(f"{what} is not valid Unicode") from None


def _lower(headers: Headers) -> dict[str, str]:
    # Duck-typed, not isinstance(Mapping): http.server's headers are a Message, whose iteration
    # yields bare names (unpacking those into pairs once broke every stdlib event endpoint).
    items = headers.items() if hasattr(headers, "items") else headers
    lowered = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        lowered[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return lowered


def _verify_signature(raw: bytes | None, headers: dict[str, str], encrypt_key: str) -> _Delivery:
    if raw is None:
        raise EventError("checking the signature needs the raw body, not a parsed dict")
    timestamp, nonce, signature = (headers.get(h) for h in _SIGNED)
    if not (timestamp and nonce and signature):
        raise EventError("signature headers missing (X-Lark-Signature, timestamp, nonce)")
    signed = _utf8(timestamp + nonce + encrypt_key, "a signature header") + raw
    expected = hashlib.sha256(signed).hexdigest()
    if not hmac.compare_digest(expected.encode(), _utf8(signature, "X-Lark-Signature")):
        # The ciphertext stays closed: bytes nobody signed are never decrypted.
        raise EventError(
            "the event's signature does not match (a wrong encrypt_key, or a body changed "
            "after signing); it was refused before decrypting"
        )
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise EventError("X-Lark-Request-Timestamp is not Unix seconds")
    return _Delivery(int(timestamp), nonce)


def _check_window(timestamp: int, now: float, window: float) -> None:
    age = now - timestamp
    if abs(age) > window:
        when = f"{age:.0f} s ago" if age > 0 else f"{-age:.0f} s ahead of this host's clock"
        raise EventError(
            f"the delivery was signed {when}, outside the replay window of {window:g} s "
            "(a replay, or a clock far off)"
        )


def _authenticate(
    raw: bytes | None,
    outer: Mapping[str, Any],
    headers: Headers | None,
    encrypt_key: str,
    *,
    now: Callable[[], float],
    window: float,
) -> _Delivery | None:
    """The signed delivery (None: no signature headers) of an encrypted body, checked before
    anything is decrypted."""
    lowered = {} if headers is None else _lower(headers)
    signed = None
    if any(name in lowered for name in _SIGNED):
        signed = _verify_signature(raw, lowered, encrypt_key)
        _check_window(signed.timestamp, now(), window)
    if "encrypt" not in outer:
        # Once an Encrypt Key is configured Feishu encrypts every callback, the URL check too:
        # a clear one comes from someone without the key.
        raise EventError("the event is not encrypted, but an encrypt_key is configured")
    return signed


def _open_unsigned(encrypted: object, encrypt_key: str) -> dict[str, Any]:
    """The payload of an unsigned callback, which only the URL check may be. One answer for
    every failure, so that the bytes a stranger sends teach them nothing about the plaintext (no
    padding oracle)."""
    try:
        payload = _decrypt(encrypted, encrypt_key)
    except EventError:
        payload = {}
    if _classify(payload)[0] != "url_verification":
        raise EventError(_UNSIGNED)
    return payload


def _decrypt(encrypted: object, encrypt_key: str) -> dict[str, Any]:
    if not isinstance(encrypted, str):
        raise EventError("'encrypt' must be a base64 string")
    try:
        data = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("'encrypt' is not valid base64") from None
    if len(data) < 2 * _BLOCK or len(data) % _BLOCK:
        raise EventError("ciphertext has an invalid length (truncated?)")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:_BLOCK])).decryptor()
    padded = decryptor.update(data[_BLOCK:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:  # a wrong key, or a tampered body
        raise EventError("cannot decrypt the event (wrong encrypt_key?)") from None
    payload = _json(plain, "the decrypted event")
    if not isinstance(payload, dict):
        raise EventError("decrypted event is not a JSON object")
    return payload


# --- the payload ---------------------------------------------------------------------------------


def _classify(payload: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(event type, event fields) for v1 and v2 (``schema: "2.0"``) payloads."""
    if payload.get("type") == "url_verification":
        return "url_verification", {}
    event = payload.get("event")
    if not isinstance(event, dict):
        event = {}
    header = _header(payload)
    kind = header.get("event_type") if payload.get("schema") and header else event.get("type")
    return (kind if isinstance(kind, str) else ""), event


def _header(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    header = payload.get("header")
    return header if isinstance(header, dict) else {}


def _verify_token(payload: Mapping[str, Any], expected: str) -> None:
    header = payload.get("header")
    token = header.get("token") if isinstance(header, dict) else payload.get("token")
    if not isinstance(token, str) or not hmac.compare_digest(
        _utf8(token, "the verification token"), expected.encode()
    ):
        raise EventError("the event's verification token does not match")


def _text(value: object, what: str) -> str:
    """A string field Feishu fills with printable text of modest length."""
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"{what} is missing or not a string")
    if len(value) > _MAX_FIELD or not value.isprintable():  # surrogates are not printable
        raise EventError(f"{what} is too long or holds control characters")
    return value


def _named_apps(payload: Mapping[str, Any], event: Mapping[str, Any]) -> list[str]:
    """Every app the event names (v2 ``header.app_id``, ``event.app_id``); a name that is not a
    string is a malformed event."""
    named = []
    for value in (_header(payload).get("app_id"), event.get("app_id")):
        if value is not None and value != "":
            if not isinstance(value, str):
                raise EventError("the event's app_id is not a string")
            named.append(value)
    return named


@dataclass(frozen=True)
class _TicketEvent:
    app_id: str  # the app named by the event and served by this endpoint
    ticket: str
    event_id: str | None
    created: float | None  # Unix seconds


def _ticket_event(
    system: Any, payload: Mapping[str, Any], event: Mapping[str, Any], app_id: str | None
) -> _TicketEvent:
    named = _named_apps(payload, event)
    if not named:
        raise EventError("app_ticket event without an app_id")
    if app_id is None:
        apps = [app.app_id for app in system.apps.values() if app.app_type is AppType.MARKETPLACE]
        if len(apps) != 1:
            # One app's keys must not set another app's ticket: say whose keys these are.
            raise EventError(
                f"the system serves {len(apps)} marketplace apps: pass app_id= to handle_event "
                "to say which app this endpoint's keys belong to"
            )
        [app_id] = apps
    _serves(app_id, named)
    ticket = _text(event.get("app_ticket"), "the app_ticket")
    return _TicketEvent(app_id, ticket, _event_id(payload), _created(payload))


def _serves(app_id: str, named: list[str]) -> None:
    if any(name != app_id for name in named):
        # App ids are not secret, but what an event calls one may be anything: keep it short.
        shown = ", ".join(repr(name[:64]) for name in named)
        raise EventError(f"the event names app {shown}; this endpoint serves {app_id!r}")


def _event_id(payload: Mapping[str, Any]) -> str | None:
    value = _header(payload).get("event_id") if payload.get("schema") else payload.get("uuid")
    return None if value is None or value == "" else _text(value, "the event id")


def _created(payload: Mapping[str, Any]) -> float | None:
    """When Feishu made the event, in Unix seconds: v2 ``header.create_time`` (milliseconds), v1
    ``ts`` (seconds); None if the event does not say."""
    if payload.get("schema"):
        value, unit = _header(payload).get("create_time"), 1000.0
    else:
        value, unit = payload.get("ts"), 1.0
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 32 and value.isascii():
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EventError("the event's creation time is not a number")
    return value / unit


def _feed_ticket(
    system: Any,
    event: _TicketEvent,
    *,
    signed: _Delivery | None,
    now: Callable[[], float],
    window: float,
    timeout: float,
) -> None:
    ledger = _LEDGERS.of(system)
    with ledger.lock:
        at = now()
        if event.created is not None and event.created > at + window:
            # A ticket dated in the future would outrank every real one that follows.
            raise EventError("the app_ticket event is dated in the future")
        receipt = ledger.admit(event, signed, at=at, window=window)
        if receipt is None:
            return  # seen before, or older than the ticket in use: acknowledged, fed nothing
        # Sent under the lock, so the actor receives the tickets in the order they were judged.
        # made_at orders it in the system's ticket book and in the store, where other
        # processes' deliveries meet (this ledger sees only this process's).
        future = system.proxy.set_app_ticket(
            event.ticket, app_id=event.app_id, made_at=event.created
        )
    try:
        future.get(timeout=timeout)
    except BaseException:
        ledger.retract(receipt)  # not fed after all: Feishu's redelivery must get through
        raise


# --- what a system has seen ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Receipt:
    app: str
    keys: tuple[bytes, ...]
    created: float | None
    previous: float | None


@dataclass
class _Ledger:
    """The deliveries one system accepted lately and the newest ticket time per app.

    ``seen`` maps a digest of each event id and signed nonce to when it may be forgotten, in
    arrival order, and holds at most ``_SEEN_MAX`` of them: pruning pops from the front, so each
    delivery costs constant time. A delivery forgotten early is still caught by ``newest``
    unless the event carries no creation time.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    newest: dict[str, float] = field(default_factory=dict)

    def admit(
        self, event: _TicketEvent, signed: _Delivery | None, *, at: float, window: float
    ) -> _Receipt | None:
        """Record a ticket event; None if it must feed nothing."""
        app, created = event.app_id, event.created
        self._prune(at)
        keys = []
        if event.event_id is not None:
            keys.append(_digest("event", app, event.event_id))
        if signed is not None:
            keys.append(_digest("nonce", str(signed.timestamp), signed.nonce))
        if any(self.seen.get(key, -math.inf) > at for key in keys):
            return None
        previous = self.newest.get(app)
        if created is not None and previous is not None and created < previous:
            return None
        for key in keys:
            self.seen.pop(key, None)
            self.seen[key] = at + window
        if created is not None and (previous is None or created > previous):
            self.newest[app] = created
        self._prune(at)
        return _Receipt(app, tuple(keys), created, previous)

    def retract(self, receipt: _Receipt) -> None:
        """Undo :meth:`admit` for a ticket that was not fed after all."""
        with self.lock:
            for key in receipt.keys:
                self.seen.pop(key, None)
            if receipt.created is not None and self.newest.get(receipt.app) == receipt.created:
                if receipt.previous is None:
                    del self.newest[receipt.app]
                else:
                    self.newest[receipt.app] = receipt.previous

    def _prune(self, at: float) -> None:
        while self.seen:
            key, until = next(iter(self.seen.items()))
            if until > at and len(self.seen) <= _SEEN_MAX:
                return
            del self.seen[key]


def _digest(*parts: str) -> bytes:
    # Fixed-size keys: what a ledger holds does not grow with what an event calls its id.
    return hashlib.sha256("\x00".join(parts).encode(errors="surrogatepass")).digest()


class _Ledgers:
    """One :class:`_Ledger` per system, made on first use and gone with the system."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_system: weakref.WeakKeyDictionary[Any, _Ledger] = weakref.WeakKeyDictionary()

    def of(self, system: Any) -> _Ledger:
        with self._lock:
            ledger = self._by_system.get(system)
            if ledger is None:
                ledger = self._by_system[system] = _Ledger()
            return ledger

    def after_fork_in_child(self) -> None:
        # A lock another thread held at fork would never be released in the child.
        self._lock = threading.Lock()
        for ledger in list(self._by_system.values()):
            ledger.lock = threading.Lock()


_LEDGERS = _Ledgers()
os.register_at_fork(after_in_child=_LEDGERS.after_fork_in_child)
