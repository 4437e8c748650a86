"""The shared-store demo runs to completion: one upstream request per token with the store."""

from __future__ import annotations

import re

from tests.redis_server import require_redis_binary
from tests.test_demos import run_demo

LINE = re.compile(r"^\s+(.+?)\s*:\s+(\d+) upstream token requests for (\d+) tokens", re.M)


def test_shared_store_demo_shows_one_upstream_request_per_token_with_redis() -> None:
    require_redis_binary()

    result = run_demo("shared_store.py", "--workers", "3", "--threads", "2", "--seconds", "3.5")

    assert result.returncode == 0, result.stderr
    runs = {label: (int(n), int(tokens)) for label, n, tokens in LINE.findall(result.stdout)}
    assert set(runs) == {"without a shared store", "with RedisStore"}, result.stdout
    requests, tokens = runs["with RedisStore"]
    assert requests == tokens >= 2  # the first token and at least one refresh, one request each
    alone, _ = runs["without a shared store"]
    assert alone >= 3 * 2  # every process fetched for itself: its first token and a refresh
