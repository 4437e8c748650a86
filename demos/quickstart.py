"""Quick start: concurrent callers, one upstream request, a forced invalidation, the report.

Runs against the embedded fake Feishu server on loopback (no credentials needed). With
FEISHU_APP_ID and FEISHU_APP_SECRET set it talks to the real Feishu instead (FEISHU_BASE_URL
picks another domain, e.g. https://open.larksuite.com).

    python demos/quickstart.py
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import actors
from actors._mask import mask_token
from actors.testing import FakeFeishu

CALLERS = 32


@contextlib.contextmanager
def feishu_app() -> Iterator[tuple[actors.AppConfig, FakeFeishu | None]]:
    """The real app from the environment, or a demo app on the embedded fake server."""
    app_id, secret = os.environ.get("FEISHU_APP_ID"), os.environ.get("FEISHU_APP_SECRET")
    if app_id and secret:
        base_url = os.environ.get("FEISHU_BASE_URL", actors.FEISHU)
        yield actors.AppConfig(app_id, secret, base_url=base_url), None
        return
    with FakeFeishu(latency=0.2) as server:
        server.add_app("cli_demo", "demo-secret")
        yield actors.AppConfig("cli_demo", "demo-secret", base_url=server.base_url), server


def main() -> int:
    with feishu_app() as (app, server), actors.TokenSystem.start(app) as system:
        where = "the embedded fake Feishu" if server else app.base_url
        print(f"app {app.app_id} against {where}")

        # 1. Single flight: many callers miss at once, one upstream request serves them all.
        tokens: list[str] = []
        barrier = threading.Barrier(CALLERS)

        def caller() -> None:
            barrier.wait()
            tokens.append(system.proxy.get_token().get(timeout=10))

        started = time.perf_counter()
        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        upstream = server.count("tenant") if server else system.metrics().fetch_success
        print(
            f"{CALLERS} concurrent callers got {len(set(tokens))} token "
            f"({mask_token(tokens[0])}) in {elapsed * 1e3:.0f} ms "
            f"from {upstream} upstream request(s)"
        )

        # 2. Warm hits never touch the network.
        started = time.perf_counter()
        for _ in range(1000):
            system.proxy.get_token().get(timeout=5)
        per_get = (time.perf_counter() - started) / 1000
        print(f"1000 warm gets: {per_get * 1e6:.0f} µs each")

        # 3. A business API said 99991663: invalidate exactly that token and fetch a fresh one.
        if server:
            server.rotate()  # the fake server revokes it, as Feishu would
        dropped = system.proxy.invalidate(tokens[0]).get(timeout=5)
        fresh = system.proxy.get_token().get(timeout=10)
        print(f"invalidate({mask_token(tokens[0])}) -> {dropped}; now serving {mask_token(fresh)}")
        print(f"invalidating the old token again -> {system.proxy.invalidate(tokens[0]).get()}")

        print()
        print(system.performance_report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
