"""A stateless stand-in for the upstream, for the scale scenario only.

At 10k-100k keys two costs would drown what the scale scenario is after (the project's own cost
per key): ``requests`` spends about 0.5 ms of CPU preparing each request on this machine, and the
FakeFeishu records every request and every issued token (memory that tracemalloc would count).
:class:`MintingSession` answers every auth POST at once with a fresh token in Feishu's response
format and keeps nothing but a counter. The FakeFeishu (through its in-process adapter) is still
used for one prewarm row, to show what the full stack costs.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict

from actors._config import TokenKind
from actors.feishu._protocol import (
    CODE_FIELD,
    CODES,
    CONTENT_TYPE,
    ENDPOINTS,
    EXPIRE_FIELD,
    MSG_FIELD,
    Rule,
)

__all__ = ["MintingSession", "rss_bytes"]

_OK = next(row.code for row in CODES.values() if row.rule is Rule.OK)
# Any POST that is not for a tenant token (both app endpoints, in practice) gets an app token.
_TENANT_PATHS = tuple(e.path for e in ENDPOINTS if e.kind is TokenKind.TENANT)
_TOKEN_FIELDS = {
    e.kind: e.token_field for e in ENDPOINTS if e.kind is not None and e.token_field is not None
}


class MintingSession(requests.Session):
    """Every POST gets ``{"code": 0, "<kind>_access_token": <new token>, "expire": lifetime}``."""

    def __init__(self, lifetime: int = 7200) -> None:
        super().__init__()
        self.trust_env = False
        self._lifetime = lifetime
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self.posts = 0

    def post(
        self, url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any
    ) -> requests.Response:
        path = url.decode() if isinstance(url, bytes) else url
        kind = TokenKind.TENANT if path.endswith(_TENANT_PATHS) else TokenKind.APP
        with self._lock:
            self.posts += 1
            serial = next(self._serial)
        body = {
            CODE_FIELD: _OK,
            MSG_FIELD: "ok",
            _TOKEN_FIELDS[kind]: f"{kind[0]}-{serial:040x}",
            EXPIRE_FIELD: self._lifetime,
        }
        response = requests.Response()
        response.status_code = 200
        response.headers = CaseInsensitiveDict({"Content-Type": CONTENT_TYPE})
        response._content = _dumps(body)
        response.encoding = "utf-8"
        response.url = path
        return response


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
