"""The public reply protocol for embedding actors: ask with :class:`GetToken`, receive a
:class:`TokenReply`. Both are immutable (pykka does not copy messages between threads)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pykka

from actors._config import TokenKind
from actors._mask import mask_token

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
        return (
            f"TokenReply(tag={self.tag!r}, token={mask_token(self.token)!r}, error={self.error!r})"
        )
