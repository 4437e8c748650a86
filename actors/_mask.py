"""Masking: how tokens and secrets appear in logs, reprs and messages."""

from __future__ import annotations

import traceback

__all__ = ["mask_secret", "mask_token", "plain_traceback"]

_VISIBLE = 2


def mask_token(token: str | None) -> str:
    """``t-abcdef…789f`` -> ``t-ab…9f``: enough to correlate log lines, never enough to use."""
    if not token:
        return "<none>"
    prefix, sep, body = token.partition("-")
    if not sep or len(prefix) > 3:
        prefix, sep, body = "", "", token
    if len(body) <= 2 * _VISIBLE:
        return f"{prefix}{sep}…"
    return f"{prefix}{sep}{body[:_VISIBLE]}…{body[-_VISIBLE:]}"


def mask_secret(secret: str | None) -> str:
    """Secrets never show, not even in part."""
    return "<unset>" if not secret else "***"


def plain_traceback(error: BaseException) -> str:
    """The traceback without frame locals: loguru's ``logger.exception`` with ``diagnose=True``
    (its default sink) prints every local variable, tokens included."""
    return "".join(traceback.format_exception(error)).rstrip()
