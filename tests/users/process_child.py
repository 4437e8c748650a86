"""The child program of the user-token process tests: one TokenSystem on a SqliteStore or a
RedisStore, steered over a pipe (:func:`tests.redis_server.serve_commands`), with commands for
logins, gets of user tokens from many threads, and a kill at a named point of a rotation.

Spawned children run :func:`user_child`; only there is ``UserSource.reached`` replaced (by
:func:`_reached`): it records when each rotation under the lease reached each point, and kills
the process (SIGKILL) at the point :meth:`UserCommands.arm` chose.
"""

from __future__ import annotations

import array
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from loguru import logger

import actors
from actors.users._rotation import UserSource
from tests.redis_server import _Child, serve_commands
from tests.stores.test_sqlite_processes import SqliteChild

USER = actors.TokenKind.USER
REDIS, SQLITE = "redis", "sqlite"


class _Marks:
    """Per rotation (one worker thread at a time), the monotonic time of each point reached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[int, dict[str, float]] = {}
        self.done: list[dict[str, float]] = []
        self.kill_at: str | None = None


_MARKS = _Marks()


def _reached(source: UserSource, point: str) -> None:
    now, thread = time.monotonic(), threading.get_ident()
    with _MARKS.lock:
        marks = _MARKS.open.setdefault(thread, {})
        if point == "sending":
            marks.clear()
        marks[point] = now
        if point == "committed":
            _MARKS.done.append(_MARKS.open.pop(thread))
        kill = point == _MARKS.kill_at
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)


class _Hammer:
    """Threads getting user tokens in a loop until stopped: how long each get took, and what
    failed."""

    def __init__(self, proxy: Any, users: list[str], threads: int, pause: float) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.waits = array.array("d")
        self.reauthorizations: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.longest = (0.0, "", 0.0)  # seconds, user, when it began (monotonic)
        self.workers = [
            threading.Thread(target=self._run, args=(proxy, users, i, pause), daemon=True)
            for i in range(threads)
        ]
        for worker in self.workers:
            worker.start()

    def _run(self, proxy: Any, users: list[str], index: int, pause: float) -> None:
        waits = array.array("d")
        turn = index
        while not self.stop.is_set():
            user = users[turn % len(users)]
            turn += 1
            began = time.monotonic()
            try:
                proxy.get_token(USER, user=user).get(timeout=60)
            except actors.ReauthorizationRequired as exc:
                with self.lock:
                    self.reauthorizations.append((user, exc.reason))
            except Exception as exc:
                with self.lock:
                    self.errors.append(repr(exc))
            took = time.monotonic() - began
            waits.append(took)
            if took > self.longest[0]:
                with self.lock:
                    self.longest = max(self.longest, (took, user, began))
            self.stop.wait(pause)
        with self.lock:
            self.waits.extend(waits)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for worker in self.workers:
            worker.join(120)
        return {
            "alive": sum(w.is_alive() for w in self.workers),
            "waits": self.waits.tobytes(),
            "reauthorizations": self.reauthorizations,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "longest": self.longest,
        }


class UserCommands(_Child):
    """The user-token commands; the store-specific ``start`` comes from the class beside."""

    events: list[str]
    load: _Hammer | None = None
    stopping: tuple[float, float] | None = None

    def start(self, config: dict[str, Any]) -> str:
        self.warnings: list[str] = []
        logger.remove()  # the children's stderr is the test run's: no lines there
        logger.add(self._logged, level="WARNING")
        logger.enable("actors")
        started: str = super().start(config)
        self.events = []
        assert self.system is not None
        self.system.subscribe(self._heard)
        return started

    def _logged(self, message: Any) -> None:
        record = message.record
        self.warnings.append(
            f"{record['time']:%H:%M:%S.%f} {record['level'].name} {record['message']}"
        )

    def logged(self) -> list[str]:
        """The WARNING (and worse) lines this process logged."""
        return list(self.warnings)

    def _heard(self, event: object) -> None:
        if isinstance(event, actors.ReauthorizationNeeded) or (
            isinstance(event, actors.RefreshFailed)
            and event.user is not None
            and not isinstance(event.error, actors.SystemStoppedError)  # a stop's, not a fault
        ):
            self.events.append(repr(event))

    def login(self, code: str, redirect_uri: str) -> str:
        """Redeem a login's code: the user's open_id."""
        grant: actors.UserGrant = self.proxy.redeem_code(code, redirect_uri=redirect_uri).get(
            timeout=30
        )
        return grant.open_id

    def user_get(self, user: str, timeout: float = 60.0) -> dict[str, Any]:
        """One get of the user's token: the token, or the reason it must log in again, and
        how long the get took."""
        began = time.monotonic()
        try:
            token: str = self.proxy.get_token(USER, user=user).get(timeout=timeout)
        except actors.ReauthorizationRequired as exc:
            return {"token": None, "reason": exc.reason, "took": time.monotonic() - began}
        except actors.TokenError as exc:
            return {"token": None, "error": repr(exc), "took": time.monotonic() - began}
        return {"token": token, "reason": None, "took": time.monotonic() - began}

    def rotate(self, user: str, timeout: float = 60.0) -> dict[str, Any]:
        """Invalidate the user's token and get another: one rotation from this process."""
        assert self.proxy.invalidate(self.user_get(user, timeout)["token"]).get(timeout=timeout)
        return self.user_get(user, timeout)

    def rotate_dying(self, user: str) -> str:
        """:meth:`rotate` in a thread, answering at once: the process is meant to die in it."""
        threading.Thread(target=self.rotate, args=(user,), daemon=True).start()
        return "rotating"

    def arm(self, point: str | None) -> str:
        """Kill this process (SIGKILL) when a rotation reaches ``point`` (None: never)."""
        _MARKS.kill_at = point
        return "armed"

    def marks(self) -> list[dict[str, float]]:
        """When each committed rotation reached each point (monotonic, host-wide)."""
        with _MARKS.lock:
            return list(_MARKS.done)

    def heard(self) -> list[str]:
        """The ReauthorizationNeeded events, and the RefreshFailed ones of users."""
        return list(self.events)

    def hammer_start(self, users: list[str], threads: int, pause: float) -> str:
        self.load = _Hammer(self.proxy, users, threads, pause)
        return "hammering"

    def hammer_stop(self) -> dict[str, Any]:
        assert self.load is not None
        load, self.load = self.load, None
        return load.finish()

    def stop(self) -> str:
        if self.load is not None:
            self.load.finish()
        began = time.monotonic()
        stopped = super().stop()
        self.stopping = (began, time.monotonic())
        return stopped

    def stopped_at(self) -> tuple[float, float] | None:
        """When (monotonic, host-wide) this process's system began and ended stopping."""
        return self.stopping


class RedisUserChild(UserCommands):
    """On a RedisStore (``redis_url``, ``prefix``, ``store``: its options)."""


class SqliteUserChild(UserCommands, SqliteChild):
    """On a SqliteStore (``path``, ``store``: its options)."""


def user_child(conn: Connection, store: str) -> None:
    """A child process on a ``store`` (:data:`REDIS` or :data:`SQLITE`)."""
    UserSource.reached = _reached  # type: ignore[method-assign,assignment]
    child = SqliteUserChild(conn) if store == SQLITE else RedisUserChild(conn)
    serve_commands(conn, child)
