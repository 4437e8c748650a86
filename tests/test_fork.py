"""A system used in a child forked after start() never hangs."""

from __future__ import annotations

import os

import pytest

import actors
from actors.testing import FunctionSource

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

MARKET = actors.AppConfig("cli_fk", "secret", app_type=actors.AppType.MARKETPLACE)


def in_child(body: object) -> tuple[int, str]:
    """Run ``body()`` in a forked child; its return value (a str) comes back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.write(write, str(body()).encode())  # type: ignore[operator]
        except BaseException as exc:
            os.write(write, f"raised {type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_in_a_forked_child_a_cached_token_is_served_and_a_miss_fails_at_once() -> None:
    source = FunctionSource(lambda r: actors.Grant(f"t-{r.tenant_key or 'app'}", 7200.0))
    with actors.TokenSystem.start(MARKET, source=source) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        assert system.proxy.get_token(tenant_key="warm").get(timeout=5) == "t-warm"

        def child() -> str:
            warm = system.proxy.get_token(tenant_key="warm").get(timeout=5)
            try:
                system.proxy.get_token(tenant_key="cold").get(timeout=5)
            except actors.SystemStoppedError as exc:
                cold = f"SystemStoppedError: {exc}"
            try:
                system.settle(timeout=5)
            except actors.TokenError:
                settled = "refused"
            system.stop(timeout=5)
            return f"{warm} | {cold} | {settled}"

        code, text = in_child(child)
    assert code == 0, text
    warm, cold, settled = text.split(" | ")
    assert warm == "t-warm"
    assert "one TokenSystem per process" in cold
    assert settled == "refused"


def test_the_parent_keeps_working_after_a_fork() -> None:
    source = FunctionSource(lambda r: actors.Grant(f"t-{r.tenant_key or 'app'}", 7200.0))
    with actors.TokenSystem.start(MARKET, source=source) as system:
        system.proxy.set_app_ticket("ticket").get(timeout=5)
        code, _ = in_child(lambda: "ok")
        assert code == 0
        assert system.proxy.get_token(tenant_key="after").get(timeout=5) == "t-after"
