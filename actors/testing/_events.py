"""Event push of the fake Feishu server: the app_ticket event, encrypted and signed as Feishu
sends it, POSTed to an app's event URL over HTTP.

Feishu encrypts an event with the app's Encrypt Key (AES-256-CBC, key ``sha256(encrypt_key)``, a
random IV before the ciphertext, PKCS#7 padding, base64: ``{"encrypt": "..."}``), signs the raw
body (``X-Lark-Signature = sha256(timestamp + nonce + encrypt_key + body)``, hex, with the
``X-Lark-Request-Timestamp`` and ``X-Lark-Request-Nonce`` headers) and puts the app's
verification token inside the payload. :func:`encrypt_event`, :func:`sign_event` and
:func:`app_ticket_event` build those pieces (for tests of an event endpoint);
:class:`EventPusher` delivers them, as ``FakeFeishu.push_events_to`` arranges after each
``app_ticket/resend``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["EventPusher", "Push", "app_ticket_event", "encrypt_event", "sign_event"]

Schema = Literal["1.0", "2.0"]
_BLOCK = 16
_MAX_ANSWER = 4096  # the part of an endpoint's answer a Push keeps


def encrypt_event(payload: Mapping[str, Any], encrypt_key: str) -> bytes:
    """The raw body Feishu posts for ``payload`` under ``encrypt_key``: the JSON object
    ``{"encrypt": base64(iv + AES-256-CBC(sha256(encrypt_key), iv, pkcs7(json(payload))))}``."""
    if not encrypt_key:
        raise ValueError("encrypt_event: the encrypt_key must not be empty")
    iv = os.urandom(_BLOCK)
    padder = padding.PKCS7(_BLOCK * 8).padder()
    plain = padder.update(json.dumps(payload).encode()) + padder.finalize()
    key = hashlib.sha256(encrypt_key.encode()).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = iv + encryptor.update(plain) + encryptor.finalize()
    return json.dumps({"encrypt": base64.b64encode(data).decode()}).encode()


def sign_event(
    raw: bytes, encrypt_key: str, *, timestamp: str | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The signature headers Feishu sends with ``raw`` (the exact body bytes): the timestamp
    (unix seconds, default now), a nonce (default random) and ``sha256(timestamp + nonce +
    encrypt_key + raw)`` in hex."""
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    nonce = secrets.token_hex(8) if nonce is None else nonce
    signature = hashlib.sha256((timestamp + nonce + encrypt_key).encode() + raw).hexdigest()
    return {
        "X-Lark-Request-Timestamp": timestamp,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": signature,
    }


def app_ticket_event(
    app_id: str, ticket: str, *, verification_token: str, schema: Schema = "1.0"
) -> dict[str, Any]:
    """The app_ticket event Feishu pushes, in the v1 schema (``type: event_callback``, the
    token at the top) or the v2 one (``schema: "2.0"``, the token in the ``header``)."""
    event = {"app_id": app_id, "app_ticket": ticket}
    if schema == "1.0":
        return {
            "ts": f"{time.time():.6f}",
            "uuid": uuid.uuid4().hex,
            "token": verification_token,
            "type": "event_callback",
            "event": {**event, "type": "app_ticket"},
        }
    if schema == "2.0":
        header = {
            "event_id": uuid.uuid4().hex,
            "event_type": "app_ticket",
            "create_time": str(int(time.time() * 1000)),
            "token": verification_token,
            "app_id": app_id,
            "tenant_key": "",
        }
        return {"schema": "2.0", "header": header, "event": event}
    raise ValueError(f"app_ticket_event: schema must be '1.0' or '2.0', got {schema!r}")


@dataclass(frozen=True)
class Push:
    """One delivery: the endpoint's HTTP status and answer, or why it could not be reached."""

    app_id: str
    status: int | None  # None: no answer (connection refused, timeout, ...)
    answer: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the endpoint accepted the event (a 2xx answer)."""
        return self.status is not None and 200 <= self.status < 300


class EventPusher:
    """Delivers app_ticket events to one event URL, as Feishu does; thread-safe.

    With ``encrypt_key`` the event is encrypted and signed; without, it goes in clear JSON and
    unsigned (as Feishu does for an app with no Encrypt Key). Every delivery is recorded as a
    :class:`Push`, whatever the endpoint answered; :meth:`wait_for_pushes` lets a test wait for
    one without sleeping.
    """

    def __init__(
        self,
        url: str,
        *,
        verification_token: str,
        encrypt_key: str | None = None,
        schema: Schema = "1.0",
        timeout: float = 5.0,
    ) -> None:
        if schema not in ("1.0", "2.0"):
            raise ValueError(f"EventPusher: schema must be '1.0' or '2.0', got {schema!r}")
        self.url = url
        self._verification_token = verification_token
        self._encrypt_key = encrypt_key
        self._schema: Schema = schema
        self._timeout = timeout
        self._cond = threading.Condition()
        self._pushes: list[Push] = []

    def __repr__(self) -> str:  # the keys stay out of test output
        return f"EventPusher({self.url!r}, schema={self._schema!r}, pushes={len(self.pushes)})"

    def body(self, app_id: str, ticket: str) -> tuple[bytes, dict[str, str]]:
        """The raw body and headers of the app_ticket event for ``ticket``."""
        payload = app_ticket_event(
            app_id, ticket, verification_token=self._verification_token, schema=self._schema
        )
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self._encrypt_key is None:
            return json.dumps(payload).encode(), headers
        raw = encrypt_event(payload, self._encrypt_key)
        return raw, {**headers, **sign_event(raw, self._encrypt_key)}

    def push_ticket(self, app_id: str, ticket: str) -> Push:
        """POST the app_ticket event now and record the outcome; never raises for the
        endpoint's failures (they are what a test looks at)."""
        raw, headers = self.body(app_id, ticket)
        try:
            with requests.Session() as session:
                session.trust_env = False  # loopback endpoints: no proxy from the environment
                response = session.post(self.url, data=raw, headers=headers, timeout=self._timeout)
            push = Push(app_id, response.status_code, response.text[:_MAX_ANSWER])
        except requests.RequestException as exc:
            push = Push(app_id, None, "", f"{type(exc).__name__}: {exc}")
        with self._cond:
            self._pushes.append(push)
            self._cond.notify_all()
        return push

    @property
    def pushes(self) -> list[Push]:
        """A copy of every delivery so far, in order."""
        with self._cond:
            return list(self._pushes)

    def wait_for_pushes(self, n: int, *, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` deliveries are done; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._pushes) >= n, timeout)
