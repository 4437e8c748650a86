"""What the fake server knows: the registered apps with their app_tickets, the test users, and
every token it has issued, under the 30-minute same-token rule with expiry on the server's clock.
User access tokens are recorded here too (by ``_users``), so business routes check every bearer
token against one record."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from actors._clock import Clock
from actors.testing._assertions import PublicKey

__all__ = ["App", "Issued", "Ledger", "User"]

# Expired tokens are pruned once the record has doubled since the last prune (and holds at least
# this many): pruning on every mint, or every N mints, would make long simulations quadratic.
_PRUNE_AT_LEAST = 1024


@dataclass
class App:
    """A registered app. A keyless one has a ``public_key`` for its client assertions and a
    secret nobody knows, so that the secret endpoints refuse it as they refuse a wrong secret."""

    secret: str = field(repr=False)
    marketplace: bool
    ticket: str | None = field(default=None, repr=False)
    public_key: PublicKey | None = field(default=None, repr=False)


@dataclass(frozen=True)
class User:
    """A test user who can sign in on the authorize page; ``open_id`` is the same for every app."""

    open_id: str
    name: str
    tenant_key: str
    union_id: str
    user_id: str | None = None


@dataclass(frozen=True)
class Issued:
    token: str
    app_id: str
    kind: str
    tenant_key: str | None
    expires_at: float
    user: User | None = None  # whose user access token this is


class Ledger:
    """Apps, tickets and issued tokens. Not thread-safe: the server calls it under its lock."""

    def __init__(self, clock: Clock, *, lifetime: float, window: float) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._window = window
        self.apps: dict[str, App] = {}
        self._current: dict[tuple[str, str, str | None], Issued] = {}
        self._issued: dict[str, Issued] = {}
        self._prune_at = _PRUNE_AT_LEAST

    def mint_ticket(self, app_id: str) -> str:
        """A new current app_ticket for a marketplace app; older ones die."""
        app = self.apps.get(app_id)
        if app is None or not app.marketplace:
            raise ValueError(f"FakeFeishu: {app_id!r} is not a registered marketplace app")
        app.ticket = f"tk-{secrets.token_hex(16)}"
        return app.ticket

    def grant(self, app_id: str, kind: str, tenant_key: str | None) -> tuple[str, int]:
        """The token for this key and its whole seconds left: the current one while at least the
        refresh window remains, else a new one (the old one stays valid until it expires)."""
        now = self._clock.now()
        current = self._current.get((app_id, kind, tenant_key))
        if current is None or int(current.expires_at - now) < self._window:
            token = f"{kind[0]}-{secrets.token_hex(16)}"
            current = Issued(token, app_id, kind, tenant_key, now + self._lifetime)
            self._current[(app_id, kind, tenant_key)] = current
            self._issued[token] = current
            if len(self._issued) >= self._prune_at:
                self._issued = {k: v for k, v in self._issued.items() if v.expires_at > now}
                self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._issued))
        return current.token, int(current.expires_at - now)

    def record(
        self,
        token: str,
        app_id: str,
        kind: str,
        tenant_key: str | None,
        expire: float,
        *,
        user: User | None = None,
    ) -> None:
        """Accept a token minted elsewhere (a scripted one, a user's) for ``expire`` seconds."""
        expires_at = self._clock.now() + expire
        self._issued[token] = Issued(token, app_id, kind, tenant_key, expires_at, user)

    def forget(self, token: str) -> None:
        """Stop accepting ``token`` (a user withdrew the app's authorization)."""
        self._issued.pop(token, None)

    def find(self, token: str) -> Issued | None:
        """The record of ``token`` if it was issued and not rotated away, expired or not."""
        return self._issued.get(token)

    def alive(self, token: str) -> Issued | None:
        """The record of ``token`` if the server accepts it now."""
        issued = self._issued.get(token)
        return issued if issued is not None and self._alive(issued) else None

    def rotate(self, app_id: str | None) -> None:
        """Forget every token of ``app_id`` (or of all apps)."""
        kept = {k: v for k, v in self._issued.items() if app_id not in (None, v.app_id)}
        self._issued = kept
        self._current = {k: v for k, v in self._current.items() if v.token in kept}

    def _alive(self, issued: Issued) -> bool:
        return issued.expires_at > self._clock.now()
