"""What a worker hands back to the TokenActor: results without the source's frames."""

from __future__ import annotations

import traceback

import pytest

import actors
from actors._source import Grant, TokenRequest

PASSWORD = "hunter2-the-sources-own-credential"


def _open_vault(credentials: dict[str, str]) -> None:
    raise OSError("the vault is unreachable")


class VaultSource:
    """A source whose failing frames hold a credential, its error chained to another."""

    def fetch(self, request: TokenRequest) -> Grant:
        credentials = {"user": "tokens", "password": PASSWORD}
        try:
            _open_vault(credentials)
        except OSError:
            raise actors.AuthError(10014, "app secret invalid")  # noqa: B904  # chained to it
        raise AssertionError("unreachable")

    def resend_ticket(self, app: actors.AppConfig) -> None:
        return None


def test_a_failed_attempt_reaches_callers_and_subscribers_without_the_sources_frames(
    clock: actors.ManualClock,
) -> None:
    app = actors.AppConfig("cli_vault", "secret-of-the-app")
    policy = actors.RefreshPolicy(seed=1)
    events: list[object] = []
    with actors.TokenSystem.start(app, policy=policy, clock=clock, source=VaultSource()) as system:
        system.subscribe(events.append)
        future = system.proxy.get_token()
        system.settle()
        with pytest.raises(actors.AuthError) as info:
            future.get(timeout=0)
    [event] = events
    assert isinstance(event, actors.RefreshFailed)
    assert event.error.__traceback__ is None  # the one the actor and every subscriber hold
    for error in (event.error, info.value):
        assert error.__context__ is None and error.__cause__ is None
        described = traceback.TracebackException.from_exception(error, capture_locals=True)
        assert PASSWORD not in "".join(described.format())
