"""The fake Feishu in a process of its own, so that its CPU does not compete with the callers'.

In one process, the fake server's HTTP handling takes the GIL from the benchmark's callers
(Feishu's does not: it runs elsewhere). :class:`ServerProcess` runs ``python -m
benchmarks.server_process``, a :class:`~actors.testing.FakeFeishu` on loopback in a child
interpreter, and steers it over the child's stdin and stdout, one JSON object per line:

- the child prints ``{"base_url": ..., "pid": ...}`` once it serves, then answers every request
  line (``{"op": "add_app" | "count" | "set_latency" | "ping" | "stop", ...}``) with
  ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``;
- it stops when told to (``stop``), at EOF on its stdin (the parent closed the pipe, or died:
  the kernel closes a dead process's pipes, so no server outlives a crashed runner), or when its
  parent process changes (a second watch, checked twice a second). It ignores SIGINT: a Ctrl-C
  in the terminal reaches the whole process group, and the parent stops it in order.

Request times (``RecordedRequest.at``) are ``time.monotonic()`` of the child, the same
system-wide clock as the parent's on Linux, so windows measured in the parent select requests.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from actors.testing import FakeFeishu

__all__ = ["ServerProcess", "main"]

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0  # a cold interpreter importing actors on a loaded machine
STOP_TIMEOUT = 10.0
_PARENT_POLL = 0.5


class ServerProcess:
    """A FakeFeishu in a child process: start it (or use ``with``), register apps, count the
    requests that arrived in a window, stop it. Thread-safe (one request at a time)."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        token_lifetime: float = 7200.0,
        refresh_window: float = 1800.0,
    ) -> None:
        self._args = [
            f"--latency={latency!r}",
            f"--token-lifetime={token_lifetime!r}",
            f"--refresh-window={refresh_window!r}",
        ]
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("ServerProcess.base_url: call start() first")
        return self._base_url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server_process", *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
            env=env,
        )
        self._process = process
        try:
            hello = _read_line(process, timeout=STARTUP_TIMEOUT)
            self._base_url = str(json.loads(hello)["base_url"])
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, op: str, **fields: Any) -> Any:
        """Send one request and return its result (raises RuntimeError on a failed one)."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("ServerProcess: not running")
        with self._lock:
            process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"ServerProcess: the server exited (status {process.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"ServerProcess: {op} failed: {reply.get('error')}")
        return reply.get("result")

    def add_app(self, app_id: str, app_secret: str, *, marketplace: bool = False) -> str | None:
        """Register an app; for a marketplace app, issue and return its app_ticket."""
        ticket = self.call("add_app", app_id=app_id, secret=app_secret, marketplace=marketplace)
        return None if ticket is None else str(ticket)

    def count(
        self,
        *,
        app_id: str | None = None,
        kinds: tuple[str, ...] = ("app", "tenant"),
        start: float | None = None,
        end: float | None = None,
    ) -> int:
        """Requests of ``kinds`` (for ``app_id``) that arrived in ``[start, end)`` (monotonic)."""
        return int(self.call("count", app_id=app_id, kinds=list(kinds), start=start, end=end))

    def set_latency(self, seconds: float, *, tenant_key: str | None = None) -> None:
        self.call("set_latency", seconds=seconds, tenant_key=tenant_key)

    def stop(self) -> None:
        """Ask the server to stop, close its stdin (EOF stops it too), wait; kill if it hangs.
        Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin is not None:
                with self._lock:
                    process.stdin.write(json.dumps({"op": "stop"}) + "\n")
                    process.stdin.flush()
        except (OSError, ValueError):
            pass  # already gone: its pipe is closed
        _close(process.stdin)  # EOF: stops it too
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _close(process.stdout)  # after it exited: its last reply never meets a closed pipe

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _close(pipe: IO[str] | None) -> None:
    if pipe is not None:
        try:
            pipe.close()
        except OSError:
            pass


def _read_line(process: subprocess.Popen[str], *, timeout: float) -> str:
    """The child's first line, or RuntimeError if it exits or says nothing in time."""
    stdout = process.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"ServerProcess: no base URL from the server in {timeout:g} s")
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"ServerProcess: the server exited at start (status {process.wait()})")
    return line


# --- the child -----------------------------------------------------------------------------------


def _handle(server: FakeFeishu, request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "ping":
        return "pong"
    if op == "add_app":
        app_id = str(request["app_id"])
        marketplace = bool(request.get("marketplace"))
        server.add_app(app_id, str(request["secret"]), marketplace=marketplace)
        return server.issue_ticket(app_id) if marketplace else None
    if op == "count":
        kinds = set(request.get("kinds") or ())
        owner, start, end = request.get("app_id"), request.get("start"), request.get("end")
        return sum(
            1
            for r in server.requests
            if (not kinds or r.kind in kinds)
            and (owner is None or r.app_id == owner)
            and (start is None or r.at >= start)
            and (end is None or r.at < end)
        )
    if op == "set_latency":
        server.set_latency(float(request["seconds"]), tenant_key=request.get("tenant_key"))
        return None
    raise ValueError(f"unknown op {op!r}")


def _send(out: IO[str], payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def _watch_parent(parent: int) -> None:
    """Exit at once if the parent process is gone (re-parented: the stdin watch's backup)."""
    while True:
        time.sleep(_PARENT_POLL)
        if os.getppid() != parent:
            os._exit(0)


def _exit_soon(seconds: float) -> None:
    """Once stopping: exit even if stopping the server hangs."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A FakeFeishu on loopback, steered over stdin.")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--token-lifetime", type=float, default=7200.0)
    parser.add_argument("--refresh-window", type=float, default=1800.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    server = FakeFeishu(
        latency=args.latency,
        token_lifetime=args.token_lifetime,
        refresh_window=args.refresh_window,
    ).start()
    out = sys.stdout
    try:
        _send(out, {"base_url": server.base_url, "pid": os.getpid()})
        for line in sys.stdin:  # ends at EOF: the parent closed the pipe or died
            try:
                request = json.loads(line)
                if request.get("op") == "stop":
                    _send(out, {"ok": True, "result": None})
                    break
                _send(out, {"ok": True, "result": _handle(server, request)})
            except Exception as exc:
                _send(out, {"ok": False, "error": repr(exc)[:500]})
    except (BrokenPipeError, OSError):
        pass  # the parent is gone
    finally:
        _exit_soon(STOP_TIMEOUT)
        server.stop()
    return 0


if __name__ == "__main__":
    status = main()
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os._exit(status)  # no interpreter teardown: nothing to flush into a parent that is gone
