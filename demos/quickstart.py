"""Quick start: concurrent callers, one upstream request, an invalidation, asyncio, the report.

Runs against the embedded fake Feishu server on loopback (no credentials needed). With
FEISHU_APP_ID and FEISHU_APP_SECRET set it talks to the real Feishu instead (FEISHU_BASE_URL
picks another domain, e.g. https://open.larksuite.com; see ``actors.AppConfig.from_env``).

    python demos/quickstart.py

Public API only; ``python -m actors demo`` is the same tour from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import actors
from actors.testing import FakeFeishu

CALLERS = 32


@contextlib.contextmanager
def feishu_app() -> Iterator[tuple[actors.AppConfig, FakeFeishu | None]]:
    """The app from the environment, or a demo app on the embedded fake server."""
    if os.environ.get("FEISHU_APP_ID"):
        yield actors.AppConfig.from_env(), None
        return
    with FakeFeishu(latency=0.2) as server:  # 200 ms per upstream request, like a far region
        server.add_app("cli_demo", "demo-secret")
        yield actors.AppConfig("cli_demo", "demo-secret", base_url=server.base_url), server


def main() -> None:
    with feishu_app() as (app, server), actors.TokenSystem.start(app) as system:
        # 1. Single flight: every caller misses at once; one upstream request serves them all.
        started = time.perf_counter()
        with ThreadPoolExecutor(CALLERS) as pool:
            tokens = list(
                pool.map(lambda _: system.proxy.get_token().get(timeout=30), range(CALLERS))
            )
        upstream = system.metrics().fetch_success
        print(
            f"{CALLERS} callers got {len(set(tokens))} token in "
            f"{(time.perf_counter() - started) * 1e3:.0f} ms from {upstream} upstream request(s)"
        )

        # 2. A business API answered 99991663: invalidate exactly the token that failed.
        old = tokens[0]
        if server is not None:
            server.rotate()  # the fake server revokes it, as Feishu would
        print(f"invalidate(old token) -> {system.proxy.invalidate(old).get(timeout=5)}")
        fresh = system.proxy.get_token().get(timeout=30)
        print(f"a fresh token is served: {fresh != old}")
        # Another caller reporting the same old token changes nothing: it is no longer cached.
        print(f"invalidate(old token) again -> {system.proxy.invalidate(old).get(timeout=5)}")

        # 3. From a coroutine: the a-prefixed methods return values and never block the loop.
        print(f"await aget_token() -> the cached token: {asyncio.run(aget(system)) == fresh}")

        # 4. What happened, as an operator would see it.
        print()
        print(system.performance_report())


async def aget(system: actors.TokenSystem) -> str:
    return await system.proxy.aget_token()


if __name__ == "__main__":
    main()
