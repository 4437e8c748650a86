"""Masking: how tokens and secrets appear in logs, reprs and messages."""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["mask_secret", "mask_token", "plain_traceback", "redact"]

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


# Token-shaped: a one-letter prefix and a dash (Feishu's t-, a-, u-; ur- for refresh tokens)
# followed by a long run of token characters, e.g. ``t-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB``.
_TOKEN_SHAPED = re.compile(r"(?<![\w-])(?:[a-z]|ur)-\w[\w-]{15,}")
# The value after a credential field's name, as JSON (``"app_secret": "…"``) or a form
# (``app_secret=…``) would spell it: also caught when the value is cut short or not this app's.
_SECRET_FIELD = re.compile(
    r"""((?:app_secret|app_ticket|app_access_token|tenant_access_token)\\?["']?\s*[:=]\s*\\?["']?)"""
    r"""[^\s"'\\&,;}]+"""
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` from upstream (an error ``msg``, a header) made safe for messages and logs.

    A proxy that echoes the request back puts the app_secret (or the app_ticket, or the app token)
    into the answer; so every occurrence of the request's ``secrets`` (also JSON- and URL-escaped)
    becomes ``***``, every value of a credential field (``"app_secret": …``) too, and anything
    token-shaped is masked as :func:`mask_token` masks tokens.
    """
    variants = {
        form
        for secret in secrets
        if secret
        for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret))
    }
    # Longest first: a secret that contains another is replaced whole.
    for form in sorted(variants, key=len, reverse=True):
        text = text.replace(form, mask_secret(form))
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + mask_secret(m.group(0)), text)
    return _TOKEN_SHAPED.sub(lambda m: mask_token(m.group(0)), text)


def plain_traceback(error: BaseException) -> str:
    """The traceback without frame locals: loguru's ``logger.exception`` with ``diagnose=True``
    (its default sink) prints every local variable, tokens included."""
    return "".join(traceback.format_exception(error)).rstrip()
