"""Fixtures for user tokens: a fake Feishu on the suite's ManualClock with two test users, and
a login helper that goes through the fake's consent (a code) and ``redeem_code``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import actors
from actors.testing import FakeFeishu
from tests.conftest import APP_ID, SECRET

REDIRECT = "http://127.0.0.1:8000/callback"
TIMEOUT = 5.0
DAY = 86400.0


@pytest.fixture
def server(clock: actors.ManualClock) -> Iterator[FakeFeishu]:
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(APP_ID, SECRET)
        fake.oauth.add_user("ou_alice", name="Alice")
        fake.oauth.add_user("ou_bob", name="Bob")
        yield fake


def login(
    system: actors.TokenSystem,
    server: FakeFeishu,
    user: str = "ou_alice",
    *,
    scope: tuple[str, ...] = ("offline_access",),
) -> actors.UserGrant:
    code = server.oauth.issue_code(APP_ID, REDIRECT, user=user, scope=scope)
    return system.proxy.redeem_code(code, redirect_uri=REDIRECT).get(timeout=TIMEOUT)
