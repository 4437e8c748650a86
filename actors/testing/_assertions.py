"""Client assertions (RFC 7523 JWTs) on both sides of the fake: a test's provider signs them,
the fake's token endpoint verifies them.

``docs/feishu-protocol.md`` ("Keyless apps") is the contract. An assertion is a compact JWS,
``RS256`` (RSA, PKCS#1 v1.5, SHA-256) or ``ES256`` (ECDSA P-256, SHA-256, the signature as
the 64 bytes ``r || s``), with the claims ``iss`` = ``sub`` = the app_id, ``aud`` = the accounts
host, ``iat``, ``exp`` (Unix seconds) and a ``jti`` used once. Made and checked with
``cryptography`` alone.

:func:`assertion_provider` builds what ``AppConfig(app_id, client_assertion=...)`` takes from a
private key made in the test; :func:`sign_assertion` signs any claims (for the refusals a test
wants to see); :class:`AssertionVerifier` is the fake's side, on its clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from actors._clock import Clock, wall_time

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "JWT_BEARER_GRANT",
    "MAX_LIFETIME",
    "AssertionProvider",
    "AssertionVerifier",
    "PrivateKey",
    "PublicKey",
    "assertion_provider",
    "load_public_key",
    "sign_assertion",
]

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# RFC 7523's names, written out here rather than read from the client's table: the fake is the
# independent check of what the client sends.
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# The longest an assertion may live, from now to its exp: it stands in for a secret for one
# request, so the fake (like RFC 7523 servers generally) refuses long-lived ones.
MAX_LIFETIME = 3600.0
_ES256_HALF = 32  # bytes of r and of s in an ES256 signature
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# jtis are remembered until their assertion expires; pruned once the memory doubled.
_PRUNE_AT_LEAST = 1024


def load_public_key(key: PublicKey | bytes | str) -> PublicKey:
    """``key`` as a public key the fake verifies with: an RSA key (2048 bits or more) or an EC
    P-256 key, given as the key object or its PEM (SubjectPublicKeyInfo); ValueError else."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        try:
            key = serialization.load_pem_public_key(key)  # type: ignore[assignment]
        except ValueError:
            raise ValueError("public_key: not a PEM public key (BEGIN PUBLIC KEY)") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("public_key: an RSA key of 2048 bits or more, or an EC P-256 key")


def _algorithm(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("client assertions are signed with RSA (RS256) or EC P-256 (ES256) keys")


def sign_assertion(
    private_key: PrivateKey,
    claims: Mapping[str, object],
    *,
    header: Mapping[str, object] | None = None,
) -> str:
    """A compact JWS of ``claims``, signed with ``private_key`` (RS256 or ES256 by its type);
    ``header`` adds to or overrides ``{"alg", "typ": "JWT"}`` (e.g. a ``kid``, or a wrong
    ``alg`` for a test of the refusal)."""
    fields = {"alg": _algorithm(private_key), "typ": "JWT", **(header or {})}
    signing_input = f"{_b64(_json(fields))}.{_b64(_json(claims))}".encode("ascii")
    if isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_ES256_HALF, "big") + s.to_bytes(_ES256_HALF, "big")
    return f"{signing_input.decode('ascii')}.{_b64(signature)}"


class AssertionProvider:
    """``provider(aud) -> str``: a fresh assertion for ``app_id`` on every call (a new ``jti``,
    ``iat`` now and ``exp`` ``lifetime`` seconds later on ``clock``'s wall time). It records the
    audiences it was asked for; its ``repr`` shows no key."""

    def __init__(
        self,
        private_key: PrivateKey,
        app_id: str,
        *,
        clock: Clock | None = None,
        lifetime: float = 300.0,
    ) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("assertion_provider: an RSA or EC P-256 private key")
        self._algorithm = _algorithm(private_key)
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError(f"assertion_provider: lifetime must be > 0 s, got {lifetime!r}")
        self._key = private_key
        self._app_id = app_id
        self._clock = clock
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._audiences: list[str] = []

    def __call__(self, aud: str) -> str:
        with self._lock:
            self._audiences.append(aud)
        now = int(time_of(self._clock))
        claims = {
            "iss": self._app_id,
            "sub": self._app_id,
            "aud": aud,
            "iat": now,
            "exp": now + math.ceil(self._lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        return sign_assertion(self._key, claims)

    @property
    def audiences(self) -> tuple[str, ...]:
        """The ``aud`` of every call, in order: as many as assertions were made."""
        with self._lock:
            return tuple(self._audiences)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._audiences)

    def __repr__(self) -> str:
        return f"<client assertion provider for {self._app_id} ({self._algorithm}); key masked>"


def assertion_provider(
    private_key: PrivateKey,
    app_id: str,
    *,
    clock: Clock | None = None,
    lifetime: float = 300.0,
) -> AssertionProvider:
    """A client-assertion provider for ``AppConfig(app_id, client_assertion=...)``, signing with
    ``private_key`` (RSA: RS256; EC P-256: ES256). Give it the fake's ``clock`` when the fake
    runs on a :class:`~actors.ManualClock`: the fake checks ``iat`` and ``exp`` on its own."""
    return AssertionProvider(private_key, app_id, clock=clock, lifetime=lifetime)


def time_of(clock: Clock | None) -> float:
    """Unix seconds on ``clock`` (None: real time): what ``iat`` and ``exp`` are counted in."""
    return time.time() if clock is None else wall_time(clock)


class AssertionVerifier:
    """The fake's check of client assertions, on its clock. Not thread-safe: the server calls
    it under its lock. Counts what it accepted and refused."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (app_id, jti) -> exp
        self._prune_at = _PRUNE_AT_LEAST
        self.accepted = 0
        self.refused = 0

    def verify(
        self, assertion: str, *, key: PublicKey, client_id: str, audience: str
    ) -> str | None:
        """None if ``assertion`` authenticates ``client_id`` now (its ``jti`` is then spent);
        otherwise why not, in words for the refusal's ``error_description``."""
        reason = self._refusal(assertion, key, client_id, audience)
        if reason is None:
            self.accepted += 1
        else:
            self.refused += 1
        return reason

    def _refusal(self, assertion: str, key: PublicKey, client_id: str, audience: str) -> str | None:
        parts = assertion.split(".")
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            return "The client assertion is not a compact JWS."
        header, claims = _json_object(parts[0]), _json_object(parts[1])
        signature = _unb64(parts[2])
        if header is None or claims is None or signature is None:
            return "The client assertion is not a compact JWS."
        if header.get("alg") != _algorithm(key):
            return f"The client assertion must be signed {_algorithm(key)}, as the app's key."
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not _signed(key, signature, signing_input):
            return "The client assertion's signature does not verify with the app's key."
        return self._claims_refusal(claims, client_id, audience)

    def _claims_refusal(
        self, claims: Mapping[str, object], client_id: str, audience: str
    ) -> str | None:
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            return "The client assertion's iss and sub must be the client_id."
        aud = claims.get("aud")
        if aud != audience and not (isinstance(aud, list) and audience in aud):
            return f"The client assertion's aud must be {audience}."
        now = wall_time(self._clock)
        exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
        nbf = _seconds(claims.get("nbf", now))
        if exp is None or iat is None or nbf is None:
            return "The client assertion needs numeric exp and iat."
        if exp <= now:
            return "The client assertion has expired."
        if exp > now + MAX_LIFETIME:
            return "The client assertion lives longer than an hour."
        if iat > now or nbf > now:
            return "The client assertion is not valid yet (iat or nbf in the future)."
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "The client assertion needs a jti."
        if (client_id, jti) in self._seen:
            return "The client assertion has been used already (jti replayed)."
        self._remember(client_id, jti, exp, now)
        return None

    def _remember(self, client_id: str, jti: str, exp: float, now: float) -> None:
        self._seen[(client_id, jti)] = exp
        if len(self._seen) >= self._prune_at:
            # An expired assertion is refused for its exp: its jti needs no memory.
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._seen))


def _signed(key: PublicKey, signature: bytes, signing_input: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(signature) != 2 * _ES256_HALF:
                return False
            r = int.from_bytes(signature[:_ES256_HALF], "big")
            s = int.from_bytes(signature[_ES256_HALF:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _seconds(value: object) -> float | None:
    """A NumericDate claim as seconds, if it is a finite number (not a bool)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _json(value: Mapping[str, object]) -> bytes:
    return json.dumps(dict(value), separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_object(text: str) -> dict[str, object] | None:
    raw = _unb64(text)
    try:
        value = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
