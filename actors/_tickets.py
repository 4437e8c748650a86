"""The app_ticket book: the tickets Feishu pushed, and the apps waiting for one after a resend.

Only the TokenActor's thread touches it. A marketplace app token needs the newest ticket; when
there is none (or Feishu rejected it with 10012) the actor asks Feishu to resend it and waits, up
to ``ticket_wait``, for ``set_app_ticket``: the deadline is a timer, one per app at a time.
"""

from __future__ import annotations

from actors import _messages as m
from actors._scheduler import Timers

__all__ = ["TicketBook"]


class TicketBook:
    def __init__(self, timers: Timers, *, wait: float) -> None:
        self._timers = timers
        self._wait = wait
        self._tickets: dict[str, str] = {}
        self._deadlines: dict[str, int] = {}  # app_id -> timer id of its wait's deadline

    def ticket(self, app_id: str) -> str | None:
        return self._tickets.get(app_id)

    def awaiting(self, app_id: str) -> bool:
        return app_id in self._deadlines

    def store(self, app_id: str, ticket: str) -> bool:
        """Keep ``ticket`` as the app's newest; True if a wait for it has just ended."""
        self._tickets[app_id] = ticket
        return self.abandon(app_id)

    def discard(self, app_id: str, ticket: str | None) -> None:
        """Feishu rejected ``ticket``: forget it unless a newer one replaced it meanwhile."""
        if ticket is not None and self._tickets.get(app_id) == ticket:
            del self._tickets[app_id]

    def start_wait(self, app_id: str, now: float) -> bool:
        """Start waiting for a pushed ticket; False if the app already waits for one."""
        if app_id in self._deadlines:
            return False
        self._deadlines[app_id] = self._timers.at(
            now + self._wait, lambda timer_id: m.TicketDeadline(app_id, timer_id)
        )
        return True

    def deadline_passed(self, app_id: str, timer_id: int) -> bool:
        """The deadline timer fired; True if it is the app's current wait (which now ends)."""
        if self._deadlines.get(app_id) != timer_id:
            return False
        del self._deadlines[app_id]
        return True

    def abandon(self, app_id: str) -> bool:
        """Stop waiting (a ticket came, or none ever will); True if the app was waiting."""
        timer_id = self._deadlines.pop(app_id, None)
        self._timers.cancel(timer_id)
        return timer_id is not None

    def describe_wait(self) -> str:
        return f"none arrived within {self._wait:g}s of asking Feishu to resend it"
