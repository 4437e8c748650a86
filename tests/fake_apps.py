"""The two apps the fake server's own tests register (shared by test_testing and
test_testing_business)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from actors._clock import ManualClock
from actors.testing import FakeFeishu

AUTH = "/open-apis/auth/v3/"
SELF = {"app_id": "cli_self", "app_secret": "self-secret-123"}
STORE = {"app_id": "cli_store", "app_secret": "store-secret-456"}


@contextlib.contextmanager
def serve_two_apps(clock: ManualClock) -> Iterator[FakeFeishu]:
    """A fake server on ``clock`` knowing SELF (self-built) and STORE (marketplace)."""
    with FakeFeishu(clock=clock) as fake:
        fake.add_app(SELF["app_id"], SELF["app_secret"])
        fake.add_app(STORE["app_id"], STORE["app_secret"], marketplace=True)
        yield fake
