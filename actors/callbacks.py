"""Event callbacks: the request Feishu posts to the app's event URL, checked and routed.

Feishu encrypts callback bodies with the app's Encrypt Key (``{"encrypt": base64(iv + AES-256-CBC
ciphertext)}``, key ``sha256(encrypt_key)``, PKCS#7 padding), signs them
(``X-Lark-Signature = sha256(timestamp + nonce + encrypt_key + raw body)``) and carries the
app's verification token inside the payload. :func:`handle_event` checks all of that, answers
the ``url_verification`` challenge, and feeds ``app_ticket`` events to the TokenSystem. Anything
it cannot trust raises :class:`EventError` (a ``ValueError``) and feeds nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["EventError", "handle_event"]


_MAX_BODY = 1 << 20  # a callback is a few hundred bytes; a megabyte is an attack or a mistake
_BLOCK = 16
_TIMESTAMP, _NONCE, _SIGNATURE = (
    "x-lark-request-timestamp",
    "x-lark-request-nonce",
    "x-lark-signature",
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
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Check and route one event callback; returns the JSON object to answer with.

    ``body`` is the request's raw bytes (or str, or the already parsed dict: then the signature
    cannot be checked). With ``encrypt_key`` an event in clear JSON is refused (Feishu then
    encrypts every callback) and, given ``headers`` too, the signature is checked (header names
    case-insensitive, as ASGI servers lower-case them; any object with ``items()`` will do, such
    as ``http.server``'s ``self.headers``); with ``verification_token`` the payload's token is
    compared in constant time.
    ``url_verification`` is answered with ``{"challenge": ...}``; an ``app_ticket`` event goes
    to ``system.proxy.set_app_ticket`` and the answer is ``{}``, as for every other event (which
    this function does not handle).
    """
    raw, outer = _parse_outer(body)
    encrypted = "encrypt" in outer
    if encrypted:
        if not encrypt_key:
            raise EventError("the event is encrypted but no encrypt_key was given")
        payload: Mapping[str, Any] = _decrypt(outer["encrypt"], encrypt_key)
    else:
        payload = outer
    kind, event = _classify(payload)
    if kind != "url_verification" and headers is not None and encrypt_key:
        # Feishu signs event deliveries (not the URL check) once an Encrypt Key is configured.
        _verify_signature(raw, _lower(headers), encrypt_key)
    if encrypt_key and not encrypted:
        # Once an Encrypt Key is configured Feishu encrypts every callback, the URL check too:
        # a clear one comes from someone without the key (unsigned, if no headers were given).
        raise EventError("the event is not encrypted, but an encrypt_key is configured")
    if verification_token is not None:
        _verify_token(payload, verification_token)
    if kind == "url_verification":
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            raise EventError("url_verification without a challenge string")
        return {"challenge": challenge}
    if kind == "app_ticket":
        app_id, ticket = event.get("app_id"), event.get("app_ticket")
        if not isinstance(app_id, str) or not isinstance(ticket, str) or not ticket:
            raise EventError("app_ticket event without app_id and app_ticket strings")
        system.proxy.set_app_ticket(ticket, app_id=app_id).get(timeout=timeout)
    return {}


def _parse_outer(body: bytes | str | Mapping[str, Any]) -> tuple[bytes | None, Mapping[str, Any]]:
    if isinstance(body, Mapping):
        return None, body
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > _MAX_BODY:
        raise EventError(f"event body too large ({len(raw)} bytes)")
    try:
        outer = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise EventError("event body is not JSON") from None
    if not isinstance(outer, dict):
        raise EventError("event body is not a JSON object")
    return raw, outer


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
        payload = json.loads(plain)
    except ValueError:  # bad padding or not JSON: a wrong key, or a tampered body
        raise EventError("cannot decrypt the event (wrong encrypt_key?)") from None
    if not isinstance(payload, dict):
        raise EventError("decrypted event is not a JSON object")
    return payload


def _classify(payload: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(event type, event fields) for v1 and v2 (``schema: "2.0"``) payloads."""
    if payload.get("type") == "url_verification":
        return "url_verification", {}
    event = payload.get("event")
    if not isinstance(event, dict):
        event = {}
    header = payload.get("header")
    if payload.get("schema") and isinstance(header, dict):
        kind = header.get("event_type")
    else:
        kind = event.get("type")
    return (kind if isinstance(kind, str) else ""), event


def _verify_token(payload: Mapping[str, Any], expected: str) -> None:
    header = payload.get("header")
    token = header.get("token") if isinstance(header, dict) else payload.get("token")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        raise EventError("the event's verification token does not match")


def _verify_signature(raw: bytes | None, headers: dict[str, str], encrypt_key: str) -> None:
    if raw is None:
        raise EventError("checking the signature needs the raw body, not a parsed dict")
    timestamp, nonce, signature = (headers.get(h) for h in (_TIMESTAMP, _NONCE, _SIGNATURE))
    if not (timestamp and nonce and signature):
        raise EventError("signature headers missing (X-Lark-Signature, timestamp, nonce)")
    expected = hashlib.sha256((timestamp + nonce + encrypt_key).encode() + raw).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise EventError("the event's signature does not match")


def _lower(headers: Headers) -> dict[str, str]:
    # Duck-typed, not isinstance(Mapping): http.server's headers are a Message, whose iteration
    # yields bare names (unpacking those into pairs once broke every stdlib event endpoint).
    items = headers.items() if hasattr(headers, "items") else headers
    lowered = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        lowered[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return lowered
