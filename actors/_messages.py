"""Messages: the public reply protocol for embedding actors, and the TokenActor's internal mail.

All messages are immutable (pykka does not copy messages between threads).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from actors._config import TokenKind

if TYPE_CHECKING:
    import pykka

    from actors._client import Grant
    from actors._config import TokenKey
    from actors._waiters import Waiter

__all__ = ["GetToken", "TokenReply"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GetToken:
    """Ask the TokenActor for a token without blocking: the answer arrives as a TokenReply.

    Example (inside another pykka actor)::

        system.actor_ref.tell(actors.GetToken(reply_to=self.actor_ref, tag="req-1"))
        ...
        def on_receive(self, message):
            if isinstance(message, actors.TokenReply) and message.tag == "req-1": ...
    """

    reply_to: pykka.ActorRef[Any]
    kind: TokenKind = TokenKind.TENANT
    tenant_key: str | None = None
    app_id: str | None = None
    tag: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenReply:
    """The answer to a GetToken: exactly one of ``token`` and ``error`` is set."""

    tag: Any
    token: str | None
    error: Exception | None

    def __repr__(self) -> str:
        from actors._mask import mask_token  # noqa: PLC0415 - keeps this module import-light

        return (
            f"TokenReply(tag={self.tag!r}, token={mask_token(self.token)!r}, error={self.error!r})"
        )


# --- internal mail of the TokenActor -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Get:
    key: TokenKey
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class SetTicket:
    app_id: str
    ticket: str = dataclasses.field(repr=False)
    waiter: Waiter | None


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidate:
    token: str = dataclasses.field(repr=False)
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    waiter: Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class FetchDone:
    """A worker finished one upstream attempt for ``key``: a Grant or the exception it raised."""

    key: TokenKey
    result: Grant | Exception
    started_at: float
    latency: float


@dataclasses.dataclass(frozen=True, slots=True)
class ResendDone:
    app_id: str
    error: Exception | None


@dataclasses.dataclass(frozen=True, slots=True)
class Prewarm:
    key: TokenKey
    timer_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class RetryDue:
    key: TokenKey
    timer_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class TicketDeadline:
    app_id: str
    timer_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReportDue:
    """Time to log the periodic performance report."""


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """settle() asks this: how many fetches are queued or in flight."""
