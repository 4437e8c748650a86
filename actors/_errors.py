"""The error hierarchy. Every message says what happened and what to do; none carries a secret
or a whole token.

::

    TokenError
    ├── AuthError              permanent credential problem (10003, 10014, 99991543)
    ├── UpstreamError          transient failure that outlived max_attempts
    │   └── RateLimitedError   99991400 / HTTP 429, carries retry_after
    ├── AppTicketError         a marketplace app has no valid app_ticket
    └── SystemStoppedError     the TokenSystem was stopped

Bad arguments (unknown app_id, tenant_key on a self-built app, invalid config) raise
:class:`ValueError`.
"""

from __future__ import annotations

__all__ = [
    "AppTicketError",
    "AuthError",
    "RateLimitedError",
    "SystemStoppedError",
    "TokenError",
    "UpstreamError",
]


class TokenError(Exception):
    """Base class of every error this library raises for a token request."""


class AuthError(TokenError):
    """Feishu rejected the app's credentials; retrying will not help until they are fixed."""

    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = msg
        super().__init__(
            f"Feishu rejected the app credentials (code {code}: {msg}); check app_id, "
            "app_secret and that the app is published. Not retried."
        )

    def __reduce__(self) -> tuple[type[AuthError], tuple[int, str]]:
        return (type(self), (self.code, self.msg))


class UpstreamError(TokenError):
    """The token endpoint kept failing transiently (network, timeout, 5xx, non-JSON, rate limit)."""

    def __init__(
        self,
        code: int | None,
        status: int | None,
        attempts: int,
        *,
        detail: str = "",
    ) -> None:
        self.code = code
        self.status = status
        self.attempts = attempts
        self.detail = detail
        parts = [f"code {code}" if code is not None else "", f"HTTP {status}" if status else ""]
        what = ", ".join(p for p in parts if p) or "no response"
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"Feishu token endpoint failed after {attempts} attempt(s) ({what}){suffix}; "
            "the next get will try again."
        )

    def after_attempts(self, attempts: int) -> UpstreamError:
        """The same failure, reported as the outcome of ``attempts`` attempts."""
        return UpstreamError(self.code, self.status, attempts, detail=self.detail)


class RateLimitedError(UpstreamError):
    """Feishu answered 99991400 / HTTP 429; ``retry_after`` is its x-ogw-ratelimit-reset."""

    def __init__(
        self,
        code: int | None,
        status: int | None,
        attempts: int,
        *,
        retry_after: float | None,
        detail: str = "",
    ) -> None:
        self.retry_after = retry_after
        hint = f"retry after {retry_after:g}s" if retry_after is not None else "rate limited"
        super().__init__(code, status, attempts, detail=detail or hint)

    def after_attempts(self, attempts: int) -> RateLimitedError:
        return RateLimitedError(
            self.code, self.status, attempts, retry_after=self.retry_after, detail=self.detail
        )


class AppTicketError(TokenError):
    """A marketplace app has no valid app_ticket (none received yet, or Feishu said 10012)."""

    def __init__(self, app_id: str, reason: str) -> None:
        self.app_id = app_id
        self.reason = reason
        super().__init__(
            f"no valid app_ticket for app {app_id}: {reason}; make sure the app_ticket event "
            "reaches set_app_ticket()."
        )

    def __reduce__(self) -> tuple[type[AppTicketError], tuple[str, str]]:
        return (type(self), (self.app_id, self.reason))


class SystemStoppedError(TokenError):
    """The TokenSystem was stopped before this request could be answered."""

    def __init__(self, msg: str = "the TokenSystem was stopped; start a new one") -> None:
        super().__init__(msg)
