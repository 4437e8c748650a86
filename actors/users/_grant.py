"""What an application sees of a user's grant (:class:`UserGrant`), and the login's URL parts:
the PKCE pair and the authorize URL (``docs/feishu-protocol.md``, "User access tokens")."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from collections.abc import Iterable
from urllib.parse import urlencode, urlsplit

from actors._config import AppConfig

__all__ = ["GRANT_LIFETIME", "OFFLINE_ACCESS", "UserGrant", "authorize_url", "pkce_pair"]

OFFLINE_ACCESS = "offline_access"  # the scope without which Feishu issues no refresh token
# Feishu refuses every refresh this long after the user's consent (20037): they log in again.
GRANT_LIFETIME = 365 * 86400.0


@dataclasses.dataclass(frozen=True, slots=True)
class UserGrant:
    """One user's authorization of one app, without its tokens (none are in it, or its repr).

    Times are on the system's clock (``system.clock.now()``): ``expires_at`` of the current
    access token, ``refresh_expires_at`` of its refresh token (None: the grant has none, so it
    ends with the access token), ``granted_at`` when the user logged in; ``reauthorize_by`` is
    ``granted_at`` plus Feishu's 365 days, after which no refresh succeeds.
    """

    app_id: str
    open_id: str
    scope: tuple[str, ...]
    expires_at: float
    refresh_expires_at: float | None
    granted_at: float

    @property
    def reauthorize_by(self) -> float:
        return self.granted_at + GRANT_LIFETIME


def pkce_pair() -> tuple[str, str]:
    """``(verifier, challenge)`` for PKCE (RFC 7636, S256): keep the verifier for
    ``redeem_code``, put the challenge in ``authorize_url``."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def authorize_url(
    app: AppConfig,
    redirect_uri: str,
    *,
    state: str,
    scope: Iterable[str] = (),
    code_challenge: str | None = None,
) -> str:
    """The page to send the user's browser to; ``offline_access`` is always asked for, so the
    grant has a refresh token. ValueError for a redirect URI that is not an absolute http(s)
    URL, an empty ``state`` or a scope with spaces."""
    parts = urlsplit(redirect_uri) if isinstance(redirect_uri, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"redirect_uri must be an absolute http(s) URL, got {redirect_uri!r}"
        raise ValueError(msg)
    if not isinstance(state, str) or not state:
        msg = "state must be a non-empty string (check it on the callback: it stops CSRF)"
        raise ValueError(msg)
    scopes = [s for s in (scope if not isinstance(scope, str) else scope.split()) if s]
    for each in scopes:
        if not isinstance(each, str) or any(c.isspace() for c in each):
            msg = f"each scope must be a string without spaces, got {each!r}"
            raise ValueError(msg)
    if OFFLINE_ACCESS not in scopes:
        scopes.append(OFFLINE_ACCESS)
    query = {
        "client_id": app.app_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "response_type": "code",
    }
    if code_challenge is not None:
        if not isinstance(code_challenge, str) or not 43 <= len(code_challenge) <= 128:
            msg = "code_challenge must be the challenge of pkce_pair() (43 to 128 characters)"
            raise ValueError(msg)
        query |= {"code_challenge": code_challenge, "code_challenge_method": "S256"}
    from actors.feishu._oauth import authorize_endpoint  # noqa: PLC0415 - its client is heavier

    return f"{authorize_endpoint(app)}?{urlencode(query)}"
