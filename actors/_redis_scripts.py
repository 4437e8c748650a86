"""The shared store's layout in Redis: key names, value format and the Lua scripts.

Every key of one app carries the hash tag ``{app:<app_id>}``, so a script that touches a token's
value, its lease and its invalidation marker stays in one Redis Cluster slot. Keys hold app ids
and tenant keys (percent-encoded), never a secret; values hold a token or a ticket, never a
secret. Times are Redis's own: ``TIME`` inside the scripts and key TTLs (``PX`` / ``PTTL``), so
hosts never compare their wall clocks.

A token value is ``{"v": 1, "token": "...", "issued_ms": <Redis TIME when written>}`` with the
token's remaining lifetime as the key's TTL; a ticket value is ``{"v": 1, "ticket": "..."}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from urllib.parse import quote

from actors._config import TokenKind

__all__ = [
    "ACQUIRE",
    "MARKER_TTL_MS",
    "RELEASE",
    "TICKET_TTL_MS",
    "VERSION",
    "WRITE",
    "Keys",
    "app_base",
    "channel",
    "check_prefix",
    "digest",
    "ticket_key",
]

VERSION = 1
# An app_ticket lives 12 hours, as the official SDKs keep it.
TICKET_TTL_MS = 12 * 3600 * 1000
# How long one token's invalidation notice is remembered: notices are published once per token.
MARKER_TTL_MS = 60_000


def digest(token: str) -> str:
    """What an invalidation notice carries instead of the token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _part(text: str) -> str:
    # Braces would move the Cluster hash tag and colons would blur the layout: percent-encode.
    return quote(text, safe="-_.~")


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        msg = f"RedisStore prefix must be a non-empty string without braces, got {prefix!r}"
        raise ValueError(msg)
    return prefix


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one token: its value, its lease and the marker prefix of its notices."""

    value: str
    lease: str
    marker: str

    @classmethod
    def of(cls, prefix: str, app_id: str, kind: TokenKind, tenant_key: str | None) -> Keys:
        tenant = _part(tenant_key) if tenant_key else "-"
        value = f"{app_base(prefix, app_id)}:tenant:{tenant}:{kind.value}"
        return cls(value=value, lease=f"{value}:lease", marker=f"{value}:invalidated:")


def app_base(prefix: str, app_id: str) -> str:
    return f"{prefix}{{app:{_part(app_id)}}}"


def ticket_key(prefix: str, app_id: str) -> str:
    return f"{app_base(prefix, app_id)}:ticket"


def channel(prefix: str) -> str:
    return f"{prefix}notices"


# Redis server time in milliseconds, inside a script.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Read the value or take the lease, in one round trip; first, if asked, invalidate a token.
# KEYS: value, lease, marker (of the invalidated token's notice).
# ARGV: lease id, lease ms, replaces ('' for none), min pttl ms, since ms,
#       invalidate ('' for none), channel, digest, origin, marker ms.
# Invalidation: the value is deleted if it still holds exactly that token, and a notice
# {"v": 1, "digest": sha256, "origin": store id, "at_ms": Redis time} is published once per
# token (the marker remembers it). Being in the same script as the lease, the invalidating
# process holds the lease before any process that got the notice can ask for it.
# A value is served if it outlives min pttl and its token is not `replaces`, or (since >= 0) if
# it was written at or after `since` (a fresh upstream answer, even the same token again).
# Returns {'value', token, pttl, now} | {'lease', '', lease ms, now} | {'wait', '', pttl, now}.
ACQUIRE = (
    _NOW
    + """
if ARGV[6] ~= '' then
  local raw = redis.call('GET', KEYS[1])
  if raw then
    local ok, cur = pcall(cjson.decode, raw)
    if ok and type(cur) == 'table' and cur.token == ARGV[6] then
      redis.call('DEL', KEYS[1])
    end
  end
  if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[10]) then
    local notice = cjson.encode({v = 1, digest = ARGV[8], origin = ARGV[9], at_ms = now})
    redis.call('PUBLISH', ARGV[7], notice)
  end
end
local raw = redis.call('GET', KEYS[1])
if raw then
  local pttl = redis.call('PTTL', KEYS[1])
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' and value.v == 1 and type(value.token) == 'string'
      and pttl > tonumber(ARGV[4]) then
    local since = tonumber(ARGV[5])
    if value.token ~= ARGV[3] or (since >= 0 and tonumber(value.issued_ms or 0) >= since) then
      return {'value', value.token, pttl, now}
    end
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lease', '', tonumber(ARGV[2]), now}
end
return {'wait', '', redis.call('PTTL', KEYS[2]), now}
"""
)

# Monotone compare-and-set of a token value. KEYS: value. ARGV: token, ttl ms, started ms (when
# the writer took its lease). Another token stays if it outlives the new one or was written after
# the writer started (a newer upstream answer); the same token is always rewritten (upstream's
# lifetime for it is the truth). Returns {1, token, ttl} if written, else {0, kept token, pttl}.
WRITE = (
    _NOW
    + """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, cur = pcall(cjson.decode, raw)
  if ok and type(cur) == 'table' and cur.v == 1 and type(cur.token) == 'string'
      and cur.token ~= ARGV[1] then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl > tonumber(ARGV[2]) or tonumber(cur.issued_ms or 0) > tonumber(ARGV[3]) then
      return {0, cur.token, pttl}
    end
  end
end
redis.call('SET', KEYS[1], cjson.encode({v = 1, token = ARGV[1], issued_ms = now}), 'PX', ARGV[2])
return {1, ARGV[1], tonumber(ARGV[2])}
"""
)

# Token-checked release: delete the lease only if it is still ours. KEYS: lease. ARGV: lease id.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
