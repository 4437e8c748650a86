"""Scenario 5's measurements, each run in a fresh interpreter by ``scenario_scale.scale``.

A fresh process keeps one measurement from another's leftovers: the resident set size of a
process that already ran other scenarios grows less than it should (freed memory gets reused),
and garbage left behind slows the next run down.

    python -m benchmarks.scale_worker TASK:N [TASK:N ...]   (TASK: memory, baseline-memory,
                                                             stub or fake)

runs the tasks in order and prints a JSON list of their rows (the last line of stdout). The full
run starts one process per task; the quick run one for all.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc
from typing import Any

import requests

import actors
from actors.testing import FakeFeishu
from benchmarks.baselines import MutexBaseline
from benchmarks.systems import ActorsSource
from benchmarks.transport import MintingSession, rss_bytes

__all__ = ["ScaleRun", "main"]

APP_ID = "cli_scale"
SECRET = "scale-secret"
STUB_URL = "https://stub.invalid"  # never connected to: MintingSession answers every POST


class ScaleRun:
    """One TokenSystem on a ManualClock; marketplace tenant keys get cached and prewarmed."""

    def __init__(
        self, session: requests.Session, base_url: str, clock: actors.ManualClock, ticket: str
    ) -> None:
        app = actors.AppConfig(
            APP_ID, SECRET, app_type=actors.AppType.MARKETPLACE, base_url=base_url
        )
        self.policy = actors.RefreshPolicy(jitter=0.0, seed=1)
        self.clock = clock
        self.source = ActorsSource(
            app, policy=self.policy, ticket=ticket, clock=clock, session=session
        )
        self.system = self.source.system
        self.system.proxy.get_token(actors.TokenKind.APP, app_id=APP_ID).get(timeout=60)
        self.system.settle(timeout=60)

    def populate(self, n: int, batch: int = 1000) -> float:
        """Cache n tenant tokens (gets in batches of ``batch``); seconds taken."""
        proxy = self.system.proxy
        started = time.perf_counter()
        for first in range(0, n, batch):
            futures = [
                proxy.get_token(tenant_key=f"tenant-{i:06d}", app_id=APP_ID)
                for i in range(first, min(n, first + batch))
            ]
            for future in futures:
                future.get(timeout=120)
        self.system.settle(timeout=600)
        return time.perf_counter() - started

    def prewarm_all(self) -> tuple[float, int]:
        """Move the clock past every key's prewarm time (no jitter: all are due at once) and
        wait until every refresh is done: seconds taken and prewarms started."""
        before = self.system.metrics().prewarms
        self.clock.advance(7200 - self.policy.prewarm_lead + 1)
        started = time.perf_counter()
        self.system.settle(timeout=900)
        elapsed = time.perf_counter() - started
        return elapsed, self.system.metrics().prewarms - before

    def close(self) -> None:
        self.source.close()


def actors_memory(n: int) -> dict[str, Any]:
    """tracemalloc: growth of traced memory while n keys get cached by the project."""
    run = ScaleRun(MintingSession(), STUB_URL, actors.ManualClock(1000.0), "tk-stub")
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        run.populate(n)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        run.close()
    return {"keys": n, "bytes_per_key": used / n}


def baseline_memory(n: int) -> dict[str, Any]:
    """tracemalloc: the same for the mutex baseline's plain dict cache (same stub upstream)."""
    app = actors.AppConfig(APP_ID, SECRET, app_type=actors.AppType.MARKETPLACE, base_url=STUB_URL)
    baseline = MutexBaseline(app, app_ticket="tk-stub", session=MintingSession())
    baseline.get("tenant-warm")
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            baseline.get(f"tenant-{i:06d}")
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        baseline.close()
    return {"keys": n, "bytes_per_key": used / n}


def _prewarm_row(run: ScaleRun, n: int, upstream: Any) -> dict[str, Any]:
    gc.collect()
    base_rss = rss_bytes()
    populate_s = run.populate(n)
    gc.collect()
    rss = rss_bytes()
    before = upstream()
    prewarm_s, prewarms = run.prewarm_all()
    return {
        "keys": n,
        "rss_bytes_per_key": None if rss is None or base_rss is None else (rss - base_rss) / n,
        "populate_s": populate_s,
        "prewarm_s": prewarm_s,
        "prewarm_keys_per_s": prewarms / prewarm_s if prewarm_s else None,
        "prewarm_us_per_key": prewarm_s / prewarms * 1e6 if prewarms else None,
        "prewarms": prewarms,
        "upstream": upstream() - before,
    }


def stub_prewarm(n: int) -> dict[str, Any]:
    """Untraced, against the stub: RSS growth and time to cache n keys, then to prewarm them."""
    session = MintingSession()
    run = ScaleRun(session, STUB_URL, actors.ManualClock(1000.0), "tk-stub")
    try:
        return _prewarm_row(run, n, lambda: session.posts)
    finally:
        run.close()


def fake_prewarm(n: int) -> dict[str, Any]:
    """The same through FakeFeishu's in-process requests adapter: the whole stack. (RSS here
    includes the fake server's own records of every request and token.)"""
    clock = actors.ManualClock(1000.0)
    with FakeFeishu(clock=clock) as server:
        server.add_app(APP_ID, SECRET, marketplace=True)
        session = requests.Session()
        session.trust_env = False
        session.mount(server.base_url, server.adapter())
        run = ScaleRun(session, server.base_url, clock, server.issue_ticket(APP_ID))
        try:
            return _prewarm_row(run, n, server.count)
        finally:
            run.close()


TASKS = {
    "memory": actors_memory,
    "baseline-memory": baseline_memory,
    "stub": stub_prewarm,
    "fake": fake_prewarm,
}


def main(argv: list[str]) -> int:
    tasks = [arg.partition(":") for arg in argv]
    if not tasks or any(name not in TASKS or not n.isdigit() for name, _, n in tasks):
        print(
            f"usage: python -m benchmarks.scale_worker {{{'|'.join(TASKS)}}}:N ...", file=sys.stderr
        )
        return 2
    rows = [TASKS[name](int(n)) for name, _, n in tasks]
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
