"""The token-source seam: what the TokenActor's workers call to obtain a grant.

One blocking call per upstream attempt, run on a worker thread, never on an actor's. The default
source is :class:`~actors.feishu._client.FeishuAuthClient` (HTTP to Feishu); a test injects a
function-backed one (``actors.testing.FunctionSource``), and a shared store wraps another source.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

from actors._config import AppConfig, TokenKey, TokenKind

__all__ = ["Grant", "TokenRequest", "TokenSource"]


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A token and its remaining lifetime in seconds, as the endpoint returned them; for a user
    token also its refresh token's remaining lifetime (None: the grant has no refresh token)."""

    token: str = dataclasses.field(repr=False)
    expire: float
    refresh_expire: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenRequest:
    """One attempt at one key's token; marketplace requests carry their ticket or app token."""

    app: AppConfig
    kind: TokenKind
    tenant_key: str | None = None
    user: str | None = None  # the open_id, for TokenKind.USER
    app_ticket: str | None = dataclasses.field(default=None, repr=False)
    app_token: str | None = dataclasses.field(default=None, repr=False)
    # A jsapi_ticket request carries its tenant's token.
    tenant_token: str | None = dataclasses.field(default=None, repr=False)
    cause: str = "miss"  # miss | prewarm | invalidate | keepalive: why the cache wants a token
    # The token the cache holds now (a prewarm) or has just dropped (an invalidation): a shared
    # store must not hand it back as the answer.
    replaces: str | None = dataclasses.field(default=None, repr=False)

    @property
    def key(self) -> TokenKey:
        return self.app.key(self.kind, self.tenant_key, self.user)


@runtime_checkable
class TokenSource(Protocol):
    """Obtains tokens. Both methods block, are called from worker threads (several at once) and
    report failure by raising an ``actors.TokenError`` (anything else counts as a transient
    failure of one attempt)."""

    def fetch(self, request: TokenRequest) -> Grant:
        """One attempt at the token ``request`` names."""
        ...

    def resend_ticket(self, app: AppConfig) -> str | None:
        """Ask Feishu to push ``app``'s app_ticket again (marketplace apps); the pushed ticket
        arrives through ``set_app_ticket``. A source that already has a ticket (a shared store)
        returns it instead; otherwise None."""
        ...
