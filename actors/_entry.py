"""A cache entry of the TokenActor."""

from __future__ import annotations

import dataclasses

from actors._config import AppConfig, TokenKey
from actors._waiters import Waiter

__all__ = ["Entry"]


@dataclasses.dataclass(slots=True, eq=False)
class Entry:
    """One key's state in the TokenActor's cache; only the actor's thread touches it."""

    key: TokenKey
    app: AppConfig
    token: str | None = dataclasses.field(default=None, repr=False)
    expires_at: float = 0.0
    waiters: list[Waiter] = dataclasses.field(default_factory=list)
    busy: bool = False  # a refresh is under way: queued, in flight, backing off or awaiting input
    cause: str = "miss"
    attempts: int = 0
    last_read: float = 0.0
    ticket_used: str | None = dataclasses.field(default=None, repr=False)
    prewarm_timer: int | None = None
    retry_timer: int | None = None
