"""The TokenActor's internal mail (the public GetToken/TokenReply live in ``_reply``).

All messages are immutable (pykka does not copy messages between threads).
"""

from __future__ import annotations

import dataclasses

from actors._config import TokenKey
from actors._source import Grant
from actors._waiters import Waiter

__all__ = [
    "FetchDone",
    "Get",
    "Invalidate",
    "Prewarm",
    "Probe",
    "ReportDue",
    "ResendDone",
    "RetryDue",
    "SetTicket",
    "Snapshot",
    "TicketDeadline",
]


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
    ticket: str | None = dataclasses.field(default=None, repr=False)  # the source had one


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
