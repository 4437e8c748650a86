"""A token source backed by a plain function, for tests that need no HTTP at all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self

from actors._config import AppConfig
from actors._source import Grant, TokenRequest

__all__ = ["FunctionSource"]


class FunctionSource:
    """A :class:`~actors._source.TokenSource` whose answers come from a function, in the spirit
    of httpx's ``MockTransport``.

    For tests of the token cache's own logic (coalescing, expiry, retries, error fan-out) where a
    fake HTTP server would only add noise: the function sees each :class:`TokenRequest` and
    returns a :class:`Grant`, or an exception instance, which is raised (return
    ``AuthError(...)`` or ``UpstreamError(...)`` to simulate Feishu's failures). Every request and
    ticket resend is recorded on arrival, before the function runs, so a test can assert on what
    was asked even while the function blocks. Workers call it from several threads at once; the
    function must be thread-safe itself.

    Args:
        fetch: Answers one token request.
        resend: Called for every app_ticket resend (e.g. to push a new ticket); default: only
            record it.
    """

    def __init__(
        self,
        fetch: Callable[[TokenRequest], Grant | Exception],
        *,
        resend: Callable[[AppConfig], str | None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._resend = resend
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._resends: list[str] = []

    @classmethod
    def constant(cls, token: str = "t-fake", expire: float = 7200.0) -> Self:
        """A source that grants ``token`` with ``expire`` seconds left to every request."""
        grant = Grant(token, expire)
        return cls(lambda _request: grant)

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every token request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def resends(self) -> list[str]:
        """The app_id of every app_ticket resend received, in arrival order."""
        with self._lock:
            return list(self._resends)

    def fetch(self, request: TokenRequest) -> Grant:
        """Record ``request``, then return the function's grant or raise its exception."""
        with self._lock:
            self._requests.append(request)
        outcome = self._fetch(request)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def resend_ticket(self, app: AppConfig) -> str | None:
        """Record the resend, then call the ``resend`` function if there is one: a ticket it
        returns is handed to the system at once, as a shared store would."""
        with self._lock:
            self._resends.append(app.app_id)
        return self._resend(app) if self._resend is not None else None
