"""RedisStore: tokens and app_tickets shared by many processes and hosts through Redis.

Every process keeps its own TokenActor (L1); Redis is the shared L2. The store does not fork the
actor's logic: :meth:`RedisStore.wrap` turns the system's :class:`TokenSource` into a
:class:`~actors._redis_source.SharedSource` (Redis first, one process per key upstream under a
lease). The store owns what the sources of one system share: the Redis client and its circuit
breaker (``actors._redis_link``), the scripts (``actors._redis_scripts``), the app_tickets, and
the listener thread for invalidation notices, started by :meth:`RedisStore.attach` and stopped by
:meth:`RedisStore.close`.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from actors import _redis_scripts as lua
from actors._config import RefreshPolicy
from actors._redis_link import Acquired, Breaker, TokenLedger, Unavailable
from actors._redis_source import SharedSource
from actors._source import Grant, TokenSource

__all__ = ["RedisStore", "SharedSource"]

_log = logger.bind(component="RedisStore")
_T = TypeVar("_T")


class RedisStore:
    """The shared token tier: ``TokenSystem.start(app, store=RedisStore("redis://…"))``.

    Args:
        url: A redis-py URL (``redis://``, ``rediss://``, ``unix://``); or pass ``client``.
        prefix: Namespace of every key and of the notice channel (no braces).
        client: A ready ``redis.Redis`` (or ``redis.RedisCluster``) to use instead of ``url``;
            its timeouts are the caller's business.
        op_timeout: Connect and read timeout of each Redis operation, in seconds.
        lease: How long one process may fetch a key's token before another takes over;
            default: the policy's ``sum(request_timeout) + 2`` seconds.
        failure_threshold: Consecutive Redis failures that open the circuit breaker.
        cooldown: How long an open breaker skips Redis before probing it again.
        ticket_poll: How long ``resend_ticket`` waits for another process's app_ticket;
            default: half the policy's ``ticket_wait``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "lark-token:",
        client: redis.Redis | redis.RedisCluster | None = None,
        op_timeout: float = 0.5,
        lease: float | None = None,
        failure_threshold: int = 3,
        cooldown: float = 5.0,
        ticket_poll: float | None = None,
    ) -> None:
        self.prefix = lua.check_prefix(prefix)
        for name, value in (("op_timeout", op_timeout), ("cooldown", cooldown)):
            _check_positive(name, value)
        for name, optional in (("lease", lease), ("ticket_poll", ticket_poll)):
            if optional is not None:
                _check_positive(name, optional)
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            msg = f"RedisStore failure_threshold must be an int >= 1, got {failure_threshold!r}"
            raise ValueError(msg)
        if (url is None) == (client is None):
            msg = "RedisStore needs either url= or client=, not both"
            raise ValueError(msg)
        if url is not None and not isinstance(url, str):
            msg = f"RedisStore url must be a string such as redis://host:6379/0, got {url!r}"
            raise ValueError(msg)
        if client is None:
            self._where = _describe(cast(str, url))
            client = redis.Redis.from_url(
                cast(str, url),
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        else:
            self._where = type(client).__name__
            self._owns_client = False
        self._client = client
        self.lease = lease
        self.ticket_poll = ticket_poll
        self._breaker = Breaker(self._where, threshold=failure_threshold, cooldown=cooldown)
        self._id = secrets.token_hex(8)  # tells this store's own notices from the others'
        self._channel = lua.channel(self.prefix)
        self._scripts = {
            name: client.register_script(text)
            for name, text in (
                ("acquire", lua.ACQUIRE),
                ("write", lua.WRITE),
                ("release", lua.RELEASE),
            )
        }
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_notice: Callable[[str], object] | None = None
        self._ledger = TokenLedger()  # tokens handed out here, and those noticed dead
        self._tickets: dict[str, str] = {}  # app_id -> the ticket this process last used

    # --- the system's side ---------------------------------------------------------------------

    def wrap(self, source: TokenSource, policy: RefreshPolicy) -> SharedSource:
        """The token source a TokenSystem uses with this store: ``source`` behind Redis."""
        if not isinstance(source, TokenSource):
            msg = f"RedisStore.wrap needs a TokenSource, got {source!r}"
            raise ValueError(msg)
        with self._lock:
            if self._closed.is_set():
                msg = "this RedisStore is closed; make a new one"
                raise ValueError(msg)
            if self._thread is not None:
                msg = "this RedisStore already serves a TokenSystem; give each system its own"
                raise ValueError(msg)
        return SharedSource(self, source, policy)

    def attach(self, on_notice: Callable[[str], object]) -> None:
        """Start listening for invalidation notices; ``on_notice(token)`` is called (on the
        listener thread) for each token this process was handed and another one invalidated.
        One store serves one TokenSystem."""
        with self._lock:
            if self._closed.is_set():
                msg = "this RedisStore is closed; make a new one"
                raise ValueError(msg)
            if self._thread is not None:
                msg = "this RedisStore already serves a TokenSystem; give each system its own"
                raise ValueError(msg)
            self._on_notice = on_notice
            self._thread = threading.Thread(
                target=self._listen, name="actors-redis-notices", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener thread, end every wait and release the connections. Idempotent."""
        self._closed.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # closing is best effort
                pass

    def put_ticket(self, app_id: str, ticket: str) -> bool:
        """Share the app_ticket the application received (kept 12 h); False if Redis is down."""
        if not isinstance(ticket, str) or not ticket.strip():
            msg = "app_ticket must be a non-empty string"
            raise ValueError(msg)
        with self._lock:
            self._tickets[app_id] = ticket
        value = json.dumps({"v": lua.VERSION, "ticket": ticket})
        key = lua.ticket_key(self.prefix, app_id)
        try:
            self._run(lambda: self._client.set(key, value, px=lua.TICKET_TTL_MS))
        except Unavailable:
            return False
        return True

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def available(self) -> bool:
        """False while the circuit breaker skips Redis."""
        return self._breaker.closed

    def wait_listening(self, timeout: float) -> bool:
        """Block until the notice listener is subscribed (tests, demos)."""
        return self._listening.wait(timeout)

    def __repr__(self) -> str:
        return f"<RedisStore {self._where} prefix={self.prefix!r}>"

    # --- Redis operations (SharedSource's side) ------------------------------------------------

    def _run(self, op: Callable[[], _T]) -> _T:
        if self._closed.is_set() or not self._breaker.allow():
            raise Unavailable
        try:
            result = op()
        except Exception as exc:  # redis-py's errors, socket errors, a malformed answer
            self._breaker.failed(exc)
            raise Unavailable from exc
        self._breaker.succeeded()
        return result

    def _script(self, name: str, keys: list[str], args: Iterable[str | int]) -> list[Any]:
        script = self._scripts[name]
        return cast("list[Any]", self._run(lambda: script(keys=keys, args=list(args))))

    def acquire(
        self,
        keys: lua.Keys,
        lease_id: str,
        *,
        lease_ms: int,
        replaces: str,
        min_ms: int,
        since: int,
        invalidate: str = "",
    ) -> Acquired:
        """Serve the shared value, or take the lease, or say how long the lease has left.
        ``invalidate``: first drop that token from Redis and tell every process, once."""
        digest = lua.digest(invalidate) if invalidate else ""
        if invalidate:
            self._ledger.note_dead(digest, -1)
        kind, token, pttl, now = self._script(
            "acquire",
            [keys.value, keys.lease, keys.marker + digest[:32]],
            (
                *(lease_id, lease_ms, replaces, min_ms, since),
                *(invalidate, self._channel, digest, self._id, lua.MARKER_TTL_MS),
            ),
        )
        return Acquired(_text(kind), _text(token), int(pttl), int(now))

    def write(
        self, keys: lua.Keys, token: str, ttl_ms: int, started_ms: int
    ) -> tuple[bool, str, int]:
        written, kept, pttl = self._script("write", [keys.value], (token, ttl_ms, started_ms))
        return bool(written), _text(kept), int(pttl)

    def release(self, keys: lua.Keys, lease_id: str) -> None:
        try:
            self._script("release", [keys.lease], (lease_id,))
        except Unavailable:
            pass  # the lease expires by itself

    def get_ticket(self, app_id: str) -> str | None:
        key = lua.ticket_key(self.prefix, app_id)
        raw = self._run(lambda: self._client.get(key))
        try:
            value = json.loads(cast(bytes, raw)) if raw is not None else None
        except ValueError:
            return None
        ticket = value.get("ticket") if isinstance(value, dict) else None
        return ticket if isinstance(ticket, str) and ticket else None

    def known_ticket(self, app_id: str) -> str | None:
        with self._lock:
            return self._tickets.get(app_id)

    def note_ticket(self, app_id: str, ticket: str) -> None:
        with self._lock:
            self._tickets[app_id] = ticket

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the store was closed meanwhile (the caller gives up)."""
        return self._closed.wait(max(0.0, seconds))

    def handed(self, grant: Grant) -> Grant:
        """Remember that ``grant``'s token went to this process's cache, by digest."""
        self._ledger.handed(grant.token)
        return grant

    def is_dead(self, token: str) -> bool:
        return self._ledger.is_dead(token)

    def noticed_at(self, token: str) -> int | None:
        return self._ledger.noticed_at(token)

    # --- invalidation notices ------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.1
        while not self._closed.is_set():
            pubsub = cast(Any, self._client).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._listening.set()
                backoff = 0.1
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
            except Exception as exc:  # Redis gone: subscribe again after a pause
                _log.debug("notice listener lost Redis ({}); resubscribing", type(exc).__name__)
            finally:
                self._listening.clear()
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_message(self, data: object) -> None:
        try:
            notice = json.loads(cast(bytes, data))
            digest, origin, at_ms = notice["digest"], notice["origin"], int(notice["at_ms"])
        except (ValueError, TypeError, KeyError):
            return
        if origin == self._id or not isinstance(digest, str):
            return
        self._ledger.note_dead(digest, at_ms)
        token = self._ledger.token(digest)
        with self._lock:
            on_notice = self._on_notice
        if token is None or on_notice is None:
            return  # never cached here
        try:
            on_notice(token)
        except Exception as exc:
            _log.warning("invalidation notice could not be delivered: {}", type(exc).__name__)


def _describe(url: str) -> str:
    """``url`` for log lines: scheme, host, port and database, never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9):
        msg = f"RedisStore {name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
