"""The layout in Redis: keys, values, notices, and the Lua scripts that keep them consistent.

Keys (``P`` = the store's prefix; one Cluster hash tag per app, domain and credentials)::

    P{app:<app_id>:<host>:<credentials digest>}:tenant:<tenant_key or ->:<kind>   token value
    P{...}:tenant:<tenant>:<kind>:lease          the fetching process's lease id (PX, renewed)
    P{...}:tenant:<tenant>:<kind>:version        the key's last write version (integer)
    P{...}:tenant:<tenant>:<kind>:invalidated:<digest>   "a notice went out for this token"
    P{...}:ticket                                the app_ticket value
    P{...}:user:<open_id>                        a user's grant (a hash, no TTL)
    P{...}:user:<open_id>:lease                  the rotating process's lease id (PX)
    P{...}:users                                 the open_ids holding a grant (a set)
    P{...}:users:version                         the last grant version of the app (integer)
    Pnotices                                     pub/sub channel of invalidation notices

The credentials digest (:func:`~actors.stores._base.credentials_digest`) keeps the same app_id on
Feishu and on Lark, on a staging URL, or with another secret, from ever sharing a key; the
secret itself is in no key and no value. Values are JSON and carry the digest of the key they
were written under, so a value copied from another key (another app, kind or tenant) is refused:

    {"v": 2, "token": "t-…", "owner": "<32 hex>", "ver": 17}      with Redis's own TTL (PX)
    {"v": 2, "ticket": "…", "owner": "<32 hex>", "made_at_ms": 1700000000000}
    notice: {"v": 2, "digest": "<sha256 of the token>", "origin": "<store id>", "ver": 17}

A user's grant is a hash of text fields (:data:`GRANT_FIELDS`): who, which scope, until when
(Unix ms on the system clock's wall), its version, a rotation in progress, why it ended, and
``sealed``, the only field that holds tokens: Fernet's base64 text of both, never the clear
bytes. It has no TTL: a refresh token outlives the access token by days, and its expiry is on
the system's wall clock (virtual under a ``ManualClock``), which Redis's clock is not. Its
versions come from one counter per app, so a grant forgotten and made again never reuses one.

A store is a cache, not an authority: every value is checked where it is read, inside the
scripts (:data:`CHECKS`), and one that fails is deleted and reported, never served. Writes are
ordered by the key's own version counter, which travels with the data through replication and
failover, never by a server's clock. App_tickets are ordered by when Feishu made their event
(``made_at_ms``, Unix ms; absent when the caller did not know it): an older one, or one of
unknown age, never replaces a ticket known to be newer.

Each script's ``KEYS``/``ARGV`` order is the argument tuple of the store method that runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from actors._config import AppConfig, TokenKind, check_made_at
from actors.stores._base import credentials_digest
from actors.stores._grants import StoredGrant

__all__ = [
    "ACQUIRE",
    "GRANT_BEGIN",
    "GRANT_COMMIT",
    "GRANT_END",
    "GRANT_FIELDS",
    "GRANT_FORGET",
    "GRANT_LEASE",
    "GRANT_READ",
    "GRANT_USERS",
    "READ_TICKET",
    "RELEASE",
    "RENEW",
    "TICKET_TTL_MS",
    "TOKEN_TTL_MAX_MS",
    "WRITE",
    "WRITE_TICKET",
    "GrantKeys",
    "Keys",
    "Notice",
    "channel",
    "check_prefix",
    "checked_commit",
    "made_at_ms",
    "notice",
    "parse_notice",
    "shareable",
    "ticket_key",
    "ticket_ttl_ms",
    "ticket_value",
    "tokens_fault",
    "users_key",
]

VERSION = 2
# Feishu's tokens live at most two hours (docs/feishu-protocol.md): a shared one claiming more
# is not one Feishu issued.
TOKEN_TTL_MAX_MS = 7_200_000
# An app_ticket lives 12 hours, as the official SDKs keep it; it is written with that TTL.
TICKET_TTL_MS = 12 * 3_600_000
# Tokens and tickets are short printable ASCII: no space, no CR/LF (they go into HTTP headers).
MAX_TEXT = 4096
_FIRST, _LAST = "!", "~"
# A value longer than this is refused before it is parsed.
MAX_VALUE_BYTES = 2 * MAX_TEXT
# How long one token's invalidation notice is remembered: notices are published once per token.
MARKER_TTL_MS = 60_000
# The version counter outlives every value of its key (at most two hours).
VERSION_TTL_MS = 24 * 3_600_000
_MAX_VERSION = 2**53  # integers a float holds exactly (Lua numbers, JSON readers)

_SHAREABLE = re.compile(f"[{_FIRST}-{_LAST}]{{1,{MAX_TEXT}}}")


def shareable(text: object) -> bool:
    """Whether ``text`` may be written to the store as a token or ticket (the scripts refuse
    anything else on reading it back)."""
    return isinstance(text, str) and _SHAREABLE.fullmatch(text) is not None


def _part(text: str) -> str:
    # Braces would move the Cluster hash tag and colons would blur the layout: percent-encode.
    return quote(text, safe="-_.~")


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        msg = f"RedisStore prefix must be a non-empty string without braces, got {prefix!r}"
        raise ValueError(msg)
    return prefix


def app_base(prefix: str, app: AppConfig) -> str:
    """The hash-tagged stem of every key of ``app``: its id, domain and credentials."""
    host = urlsplit(app.base_url).netloc.lower()
    owner = credentials_digest(app)[:16]
    return f"{prefix}{{app:{_part(app.app_id)}:{_part(host)}:{owner}}}"


def owner(key: str) -> str:
    """What a value written under ``key`` carries, so that it is refused under any other key."""
    return hashlib.sha256(b"lark-token-actors value owner\0" + key.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one token: its value, lease, version counter, notice markers, and the owner
    digest its value carries."""

    value: str
    lease: str
    version: str
    marker: str
    owner: str

    @classmethod
    def of(cls, prefix: str, app: AppConfig, kind: TokenKind, tenant_key: str | None) -> Keys:
        tenant = _part(tenant_key) if tenant_key else "-"
        value = f"{app_base(prefix, app)}:tenant:{tenant}:{kind.value}"
        return cls(
            value=value,
            lease=f"{value}:lease",
            version=f"{value}:version",
            marker=f"{value}:invalidated:",
            owner=owner(value),
        )


def ticket_key(prefix: str, app: AppConfig) -> str:
    return f"{app_base(prefix, app)}:ticket"


@dataclasses.dataclass(frozen=True, slots=True)
class GrantKeys:
    """The keys of one user's grant: the grant, its rotation lease, the app's index of users
    and grant version counter, and the owner digest the grant carries."""

    value: str
    lease: str
    index: str
    counter: str
    owner: str

    @classmethod
    def of(cls, prefix: str, app: AppConfig, user: str) -> GrantKeys:
        value = f"{app_base(prefix, app)}:user:{_part(user)}"
        index = users_key(prefix, app)
        return cls(
            value=value,
            lease=f"{value}:lease",
            index=index,
            counter=f"{index}:version",
            owner=owner(value),
        )


def users_key(prefix: str, app: AppConfig) -> str:
    """The set of the open_ids that hold a grant of ``app``."""
    return f"{app_base(prefix, app)}:users"


def ticket_value(key: str, ticket: str, *, made_at_ms: int | None = None) -> str:
    value: dict[str, object] = {"v": VERSION, "ticket": ticket, "owner": owner(key)}
    if made_at_ms is not None:
        value["made_at_ms"] = made_at_ms
    return json.dumps(value)


def made_at_ms(made_at: object) -> int | None:
    """``made_at`` (Unix seconds, or None) as the integer milliseconds a ticket value holds."""
    seconds = check_made_at(made_at)
    return None if seconds is None else round(seconds * 1000)


def ticket_ttl_ms(made_at_ms: int | None, *, now_ms: float) -> int:
    """How long a ticket is kept: 12 h from when it was made (or from now, not knowing),
    never longer; <= 0 for a ticket too old to share."""
    if made_at_ms is None:
        return TICKET_TTL_MS
    return min(TICKET_TTL_MS, math.floor(made_at_ms + TICKET_TTL_MS - now_ms))


def channel(prefix: str) -> str:
    return f"{prefix}notices"


class Notice(NamedTuple):
    digest: str
    origin: str
    version: int  # the key's version when the token was invalidated; -1 if not known


_DIGEST = re.compile("[0-9a-f]{64}")
MAX_NOTICE_BYTES = 512


def notice(digest: str, *, origin: str, version: int = -1) -> str:
    """An invalidation notice as every process reads it (:func:`parse_notice`); version -1:
    not tied to a key's version (a token found dead, a user logged out)."""
    return json.dumps({"v": 2, "digest": digest, "origin": origin, "ver": version})


def parse_notice(data: object) -> Notice | None:
    """A notice from the channel, or None for anything else: anyone who can publish may send
    any bytes (huge numbers, NaN, other shapes), and none of them may reach the ledger."""
    if not isinstance(data, bytes | str) or len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        notice = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(notice, dict):
        return None
    digest, origin = notice.get("digest"), notice.get("origin")
    # A process of the previous format (no version) during a rolling upgrade: -1 treats its
    # notice as an invalidation found here.
    version = notice.get("ver", -1 if "at_ms" in notice else None)
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        return None
    if not (isinstance(origin, str) and 0 < len(origin) <= 64):
        return None
    if type(version) is not int or not -1 <= version < _MAX_VERSION:
        return None
    return Notice(digest, origin, version)


# --- the scripts ---------------------------------------------------------------------------------

# Shared by every script. ``retyped(n)`` deletes any of the script's first n keys that holds
# another Redis type (someone's HSET), so that the script's own commands never fail with
# WRONGTYPE: one bad key stays that key's problem.
# ``check(raw, field, owner, pttl, max_ms)`` is the value if it is usable, else nil and why.
CHECKS = f"""
local function retyped(count)
  local fault = ''
  for i = 1, count do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    if kind ~= 'none' and kind ~= 'string' then
      redis.call('DEL', KEYS[i])
      fault = 'another Redis type'
    end
  end
  return fault
end
local function integer(n)
  return type(n) == 'number' and n >= 0 and n < {_MAX_VERSION} and math.floor(n) == n
end
local function check(raw, field, owner, pttl, max_ms)
  if #raw > {MAX_VALUE_BYTES} then return nil, 'too large' end
  local ok, value = pcall(cjson.decode, raw)
  if not ok or type(value) ~= 'table' then return nil, 'not a JSON object' end
  if value.v ~= {VERSION} then return nil, 'unknown format' end
  local text = value[field]
  if type(text) ~= 'string' or #text == 0 or #text > {MAX_TEXT}
      or string.find(text, '[^{_FIRST}-{_LAST}]') then
    return nil, 'not a ' .. field
  end
  if value.owner ~= owner then return nil, 'written for another key' end
  if field == 'token' and not integer(value.ver) then return nil, 'no version' end
  if field == 'ticket' and value.made_at_ms ~= nil and not integer(value.made_at_ms) then
    return nil, 'not a creation time'
  end
  if pttl <= 0 or pttl > max_ms then return nil, 'lifetime out of bounds' end
  return value
end
local function version(key)
  local raw = redis.call('GET', key)
  local n = raw and tonumber(raw)
  if integer(n) then return n end
  if raw then redis.call('DEL', key) end
  return 0
end
"""

# Read the value or take the lease, in one round trip; first, if asked, invalidate a token.
# KEYS: value, lease, version, marker (of the invalidated token's notice).
# ARGV: lease id, lease ms, replaces ('' for none), min pttl ms, since (version, -1 for none),
#       invalidate ('' for none), channel, digest, origin, marker ms, owner, max pttl ms.
# Invalidation: the value is deleted if it still holds exactly that token, and a notice
# (digest, origin, the key's version) is published once per token (the marker remembers it).
# Being in the same script as the lease, the invalidating process holds the lease before any
# process that got the notice can ask for it.
# A value is served if it is usable, outlives min pttl and its token is not `replaces`, or
# (since >= 0) if it was written after version `since` (a fresh upstream answer, even the same
# token again). An unusable value is deleted and named in the answer's last field.
# Returns {kind, token, pttl, version, fault}: {'value', token, pttl, ...} |
# {'lease', '', lease ms, ...} | {'wait', '', lease pttl, ...}; version: the key's counter.
ACQUIRE = (
    CHECKS
    + """
local fault = retyped(4)
local owner, max_ms = ARGV[11], tonumber(ARGV[12])
local top = version(KEYS[3])
if ARGV[6] ~= '' then
  local raw = redis.call('GET', KEYS[1])
  local cur = raw and check(raw, 'token', owner, 1, max_ms)
  if cur and cur.token == ARGV[6] then
    redis.call('DEL', KEYS[1])
  end
  if redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[10]) then
    local notice = cjson.encode({v = 2, digest = ARGV[8], origin = ARGV[9], ver = top})
    redis.call('PUBLISH', ARGV[7], notice)
  end
end
local raw = redis.call('GET', KEYS[1])
if raw then
  local pttl = redis.call('PTTL', KEYS[1])
  local value, why = check(raw, 'token', owner, pttl, max_ms)
  if not value then
    redis.call('DEL', KEYS[1])
    fault = why
  elseif pttl > tonumber(ARGV[4]) then
    local since = tonumber(ARGV[5])
    if value.token ~= ARGV[3] or (since >= 0 and value.ver > since) then
      return {'value', value.token, pttl, top, fault}
    end
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lease', '', tonumber(ARGV[2]), top, fault}
end
return {'wait', '', redis.call('PTTL', KEYS[2]), top, fault}
"""
)

# Monotone compare-and-set of a token value. KEYS: value, version. ARGV: token, ttl ms, seen
# (the key's version when the writer took its lease), owner, max pttl ms, min pttl ms.
# Another usable token stays if it outlives min pttl and was written after the writer took its
# lease (a newer upstream answer); one the writer saw is the one it fetched to replace. Only
# versions decide, never lifetimes: after failover to a server whose clock is slower, every
# PTTL written before it reads longer than it is. The same token is rewritten (a fresh
# version) but never with a longer lifetime: a late writer, paused past its lease, cannot
# extend it.
# Returns {1, token, ttl, fault} if written, else {0, kept token, its pttl, fault}.
WRITE = (
    CHECKS
    + """
local fault = retyped(2)
local ttl = tonumber(ARGV[2])
local top = version(KEYS[2])
local raw = redis.call('GET', KEYS[1])
if raw then
  local pttl = redis.call('PTTL', KEYS[1])
  local cur, why = check(raw, 'token', ARGV[4], pttl, tonumber(ARGV[5]))
  if not cur then
    fault = why
  else
    if cur.token ~= ARGV[1] then
      if pttl > tonumber(ARGV[6]) and cur.ver > tonumber(ARGV[3]) then
        return {0, cur.token, pttl, fault}
      end
    elseif pttl < ttl then
      ttl = pttl
    end
    if cur.ver > top then top = cur.ver end
  end
end
top = top + 1
redis.call('SET', KEYS[2], top, 'PX', """
    + str(VERSION_TTL_MS)
    + """)
local value = cjson.encode({v = 2, token = ARGV[1], owner = ARGV[4], ver = top})
redis.call('SET', KEYS[1], value, 'PX', ttl)
return {1, ARGV[1], ttl, fault}
"""
)

# The stored app_ticket if usable, else nil; and why not ('' for none: absent or usable). An
# unusable one is deleted. KEYS: ticket. ARGV[1]: owner.
_STORED_TICKET = f"""
local function stored_ticket()
  local fault = retyped(1)
  local raw = redis.call('GET', KEYS[1])
  if not raw then return nil, fault end
  local value, why = check(raw, 'ticket', ARGV[1], redis.call('PTTL', KEYS[1]), {TICKET_TTL_MS})
  if value then return value, fault end
  redis.call('DEL', KEYS[1])
  return nil, why
end
"""

# The app_ticket, if usable. KEYS: ticket. ARGV: owner. Returns {ticket or '', fault}.
READ_TICKET = (
    CHECKS
    + _STORED_TICKET
    + """
local value, fault = stored_ticket()
return {value and value.ticket or '', fault}
"""
)

# Keep the newest app_ticket. KEYS: ticket. ARGV: owner, the new value, its made_at_ms ('' if
# not known), ttl ms. A usable stored ticket with a made_at_ms stays if the new one is older or
# of unknown age; one without a made_at_ms is always replaced. Returns {written, fault}.
WRITE_TICKET = (
    CHECKS
    + _STORED_TICKET
    + """
local cur, fault = stored_ticket()
if cur and cur.made_at_ms ~= nil then
  local made = tonumber(ARGV[3])
  if made == nil or made < cur.made_at_ms then return {0, fault} end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return {1, fault}
"""
)

# Keep a lease alive while its holder lives. KEYS: lease. ARGV: lease id, lease ms.
RENEW = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Token-checked release: delete the lease only if it is still ours. KEYS: lease. ARGV: lease id.
RELEASE = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# --- user grants ---------------------------------------------------------------------------------

# The fields of a grant's hash ('' for None), in the order the read script answers them.
GRANT_FIELDS = (
    "v",
    "owner",
    "app_id",
    "open_id",
    "scope",
    "expires_at_ms",
    "refresh_expires_at_ms",
    "granted_at_ms",
    "ver",
    "rotating",
    "ended",
    "sealed",
)
# Fernet's base64 text of two tokens of MAX_TEXT characters each (about 11 000), and some.
MAX_SEALED = 4 * MAX_TEXT
MAX_REASON = 64
_FERNET_OVERHEAD = 1 + 8 + 16 + 32  # version byte, timestamp, IV, HMAC; then 16-byte blocks


def checked_commit(
    name: str, grant: StoredGrant, expect: object, app: AppConfig | None
) -> AppConfig:
    """``app`` (the config of the grant's app, as the book's store knows it), if a store book
    named ``name`` may commit ``grant`` with ``expect``; ValueError (before anything is written)
    for a version that is none, an app the store has not served, or tokens it cannot keep."""
    if expect is not None and (type(expect) is not int or expect < 0):
        msg = f"expect must be a version (an int >= 0) or None, got {expect!r}"
        raise ValueError(msg)
    if app is None:
        msg = f"{name} has not served app {grant.app_id!r}: read its user's grant first"
        raise ValueError(msg)
    problem = tokens_fault(grant.access_token, grant.refresh_token)
    if problem:
        msg = f"{name} cannot keep this grant of {grant.app_id}: {problem}"
        raise ValueError(msg)
    return app


def tokens_fault(access_token: object, refresh_token: object) -> str:
    """Why these tokens cannot be a live grant's ('' if they can): the checks of a token
    shared in a store, on the tokens a grant seals."""
    if not shareable(access_token):
        return "not an access token"
    if refresh_token is not None and not shareable(refresh_token):
        return "not a refresh token"
    return ""


# Shared by the grant scripts, after CHECKS. ``stored_grant(key, owner, app_id, open_id)`` is
# the grant (field -> text) if it is usable, else nil and why ('' when there is none); an
# unusable grant is left as it is (a durable record is overwritten by a new login, never
# deleted by a reader). ``grant_fault`` is the one check of a grant, also run on every new one
# before it is written: a store never writes what it would refuse to read.
GRANT_CHECKS = f"""
local FIELDS = {{{", ".join(f"'{field}'" for field in GRANT_FIELDS)}}}
local function count(text, optional)
  if optional and text == '' then return true end
  return #text > 0 and #text <= 16 and not string.find(text, '[^0-9]')
    and tonumber(text) < {_MAX_VERSION}
end
local function printable(text, max)
  return #text > 0 and #text <= max and not string.find(text, '[^{_FIRST}-{_LAST}]')
end
local function scope_list(text)
  if #text > {MAX_VALUE_BYTES} then return false end
  local ok, value = pcall(cjson.decode, text)
  if not ok or type(value) ~= 'table' then return false end
  for index, item in pairs(value) do
    if type(index) ~= 'number' or type(item) ~= 'string' then return false end
  end
  return true
end
-- Whether text can be a Fernet token at all (its version byte, its length in blocks): one that
-- cannot is a broken grant, not one sealed with a key this store lacks.
local function fernet_shaped(text)
  if #text == 0 or #text > {MAX_SEALED} or #text % 4 ~= 0 or string.sub(text, 1, 1) ~= 'g' then
    return false
  end
  local padding = string.match(text, '^[%w_%-]+(=*)$')
  if not padding or #padding > 2 then return false end
  local size = #text / 4 * 3 - #padding
  return size > {_FERNET_OVERHEAD} and (size - {_FERNET_OVERHEAD}) % 16 == 0
end
local function grant_fault(g, owner, app_id, open_id)
  for _, field in ipairs(FIELDS) do
    if type(g[field]) ~= 'string' then return 'no ' .. field end
  end
  if g.v ~= '{VERSION}' then return 'unknown format' end
  if g.owner ~= owner then return 'written for another key' end
  if g.app_id ~= app_id or g.open_id ~= open_id or not printable(open_id, {MAX_TEXT}) then
    return 'written for another app or user'
  end
  if not (count(g.expires_at_ms) and count(g.granted_at_ms) and count(g.ver)
      and count(g.refresh_expires_at_ms, true) and count(g.rotating, true)) then
    return 'not a time or version'
  end
  if tonumber(g.ver) == 0 then return 'not a time or version' end
  if not scope_list(g.scope) then return 'not a scope' end
  if g.ended == '' then
    if not fernet_shaped(g.sealed) then return 'not sealed tokens' end
  elseif not printable(g.ended, {MAX_REASON}) or g.sealed ~= '' then
    return 'not an ended grant'
  end
  return nil
end
local function stored_grant(key, owner, app_id, open_id)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return nil, '' end
  if kind ~= 'hash' then return nil, 'another Redis type' end
  local values = redis.call('HMGET', key, unpack(FIELDS))
  local g = {{}}
  for i, field in ipairs(FIELDS) do
    if values[i] then g[field] = values[i] end
  end
  local why = grant_fault(g, owner, app_id, open_id)
  if why then return nil, why end
  return g, ''
end
local function typed(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    redis.call('DEL', key)
    return 'another Redis type'
  end
  return ''
end
local function either(fault, other)
  if fault ~= '' then return fault end
  return other
end
local function next_version(key, floor)
  local fault = typed(key, 'string')
  local top = version(key)
  if floor > top then top = floor end
  top = top + 1
  redis.call('SET', key, string.format('%.0f', top))
  return string.format('%.0f', top), fault
end
"""

# The grant, if usable. KEYS: grant, index. ARGV: owner, app_id, open_id.
# Returns {found (1/0), fault, the GRANT_FIELDS' texts ('' each when not found)}. A user in the
# index without any grant (deleted by hand, evicted) leaves the index.
GRANT_READ = (
    CHECKS
    + GRANT_CHECKS
    + """
local g, fault = stored_grant(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
local answer = {g and 1 or 0, fault}
for _, field in ipairs(FIELDS) do table.insert(answer, g and g[field] or '') end
if not g and fault == '' and redis.call('TYPE', KEYS[2])['ok'] == 'set' then
  redis.call('SREM', KEYS[2], ARGV[3])
end
return answer
"""
)

# The users of the app's index. KEYS: index. Returns {fault, {open_id, ...}}.
GRANT_USERS = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'set' then return {'', redis.call('SMEMBERS', KEYS[1])} end
if kind == 'none' then return {'', {}} end
return {'another Redis type', {}}
"""

# Take a user's rotation lease. KEYS: lease. ARGV: lease id, lease ms. A lease already held by
# that id is renewed. Returns {0, fault} when taken, else {the holder's pttl (> 0), fault}; a
# lease without a lifetime (not one a store wrote) is given one, so that it lapses too.
GRANT_LEASE = (
    CHECKS
    + """
local fault = retyped(1)
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, fault} end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, fault}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  pttl = tonumber(ARGV[2])
end
return {math.max(pttl, 1), fault}
"""
)

# Record that grant `version`'s refresh token is about to be sent, if `lease id` holds the
# lease and the grant is still that version. KEYS: grant, lease. ARGV: owner, app_id, open_id,
# lease id, version. Returns {1 or 0, fault}.
GRANT_BEGIN = (
    CHECKS
    + GRANT_CHECKS
    + """
if redis.call('TYPE', KEYS[2])['ok'] ~= 'string' or redis.call('GET', KEYS[2]) ~= ARGV[4] then
  return {0, ''}
end
local g, fault = stored_grant(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not g or tonumber(g.ver) ~= tonumber(ARGV[5]) then return {0, fault} end
redis.call('HSET', KEYS[1], 'rotating', g.ver)
return {1, fault}
"""
)

# Compare-and-set a grant on its version, clearing any rotation in progress. KEYS: grant,
# counter, index. ARGV: owner, app_id, open_id, expect ('' for whatever is stored; 0 for none,
# which an unusable grant counts as), scope, expires_at_ms, refresh_expires_at_ms,
# granted_at_ms, sealed. The new version is one past both the app's counter and the stored
# grant's. Returns {the new version, fault}, {0, fault} when another write came first, or
# {-1, why} for a grant this layout cannot keep (nothing written).
GRANT_COMMIT = (
    CHECKS
    + GRANT_CHECKS
    + """
local owner, app_id, open_id = ARGV[1], ARGV[2], ARGV[3]
local cur, fault = stored_grant(KEYS[1], owner, app_id, open_id)
local stored = cur and tonumber(cur.ver) or 0
if ARGV[4] ~= '' and stored ~= tonumber(ARGV[4]) then return {0, fault} end
local new = {v = '2', owner = owner, app_id = app_id, open_id = open_id, scope = ARGV[5],
  expires_at_ms = ARGV[6], refresh_expires_at_ms = ARGV[7], granted_at_ms = ARGV[8],
  ver = '1', rotating = '', ended = '', sealed = ARGV[9]}
local why = grant_fault(new, owner, app_id, open_id)
if why then return {-1, why} end
fault = either(fault, typed(KEYS[3], 'set'))
local top, retyped_counter = next_version(KEYS[2], stored)
new.ver = top
local fields = {}
for _, field in ipairs(FIELDS) do
  table.insert(fields, field)
  table.insert(fields, new[field])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[3], open_id)
return {tonumber(top), either(fault, retyped_counter)}
"""
)

# Mark grant `expect` ended, its tokens erased. KEYS: grant, counter. ARGV: owner, app_id,
# open_id, reason, expect. Returns {1 or 0, fault}, or {-1, why} for a reason this layout
# cannot keep (nothing written).
GRANT_END = (
    CHECKS
    + GRANT_CHECKS
    + """
if not printable(ARGV[4], """
    + str(MAX_REASON)
    + """) then return {-1, 'not a reason'} end
local g, fault = stored_grant(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not g or tonumber(g.ver) ~= tonumber(ARGV[5]) then return {0, fault} end
local top, retyped_counter = next_version(KEYS[2], tonumber(g.ver))
redis.call('HSET', KEYS[1], 'ver', top, 'rotating', '', 'ended', ARGV[4], 'sealed', '')
return {1, either(fault, retyped_counter)}
"""
)

# Delete a user's grant, usable or not (a logout). KEYS: grant, index. ARGV: owner, app_id,
# open_id. Returns {1 if a usable grant was there else 0, fault}.
GRANT_FORGET = (
    CHECKS
    + GRANT_CHECKS
    + """
local g, fault = stored_grant(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[1])
if redis.call('TYPE', KEYS[2])['ok'] == 'set' then redis.call('SREM', KEYS[2], ARGV[3]) end
return {g and 1 or 0, fault}
"""
)
