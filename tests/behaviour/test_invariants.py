"""Property-based checks of the system's invariants under random traffic, time and faults.

Whatever the sequence of gets, clock jumps, upstream failures, revocations and invalidations:
no token is served past its safety margin, at most one upstream request per key is in flight,
and every get resolves (with a token or an error) once time moves on.
"""

from __future__ import annotations

from typing import Any

import pykka
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actors
from actors.testing import FakeFeishu, Reply
from tests.conftest import MARKET_ID, MARKET_SECRET, forward_tickets

TENANTS = ["t0", "t1", "t2"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.sampled_from(TENANTS)),
        st.tuples(st.just("advance"), st.floats(0, 4000)),
        st.tuples(st.just("fail"), st.integers(1, 6)),
        st.tuples(st.just("invalidate"), st.sampled_from(TENANTS)),
        st.tuples(st.just("rotate"), st.just("")),
    ),
    min_size=1,
    max_size=25,
)


@given(operations)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_invariants_hold_under_random_traffic_time_and_faults(ops: list[tuple[str, Any]]) -> None:
    clock = actors.ManualClock(start=0.0)
    policy = actors.RefreshPolicy(
        seed=3, max_attempts=3, retry_base=1.0, retry_cap=10.0, ticket_wait=30.0
    )
    with FakeFeishu(clock=clock) as server:
        server.add_app(MARKET_ID, MARKET_SECRET, marketplace=True)
        app = actors.AppConfig(
            MARKET_ID, MARKET_SECRET, app_type=actors.AppType.MARKETPLACE, base_url=server.base_url
        )
        with actors.TokenSystem.start(app, policy=policy, clock=clock) as system:
            forward_tickets(server, system)
            pending: list[pykka.Future[str]] = []
            last: dict[str, str] = {}

            def check_resolved() -> None:
                system.settle()
                still = []
                for future in pending:
                    try:
                        token = future.get(timeout=0)
                    except pykka.Timeout:
                        still.append(future)
                        continue
                    except actors.TokenError:
                        continue
                    expires_at = server.expires_at(token)
                    if expires_at is not None:  # None: revoked by rotate() after it was served
                        assert clock.now() < expires_at - policy.safety_margin
                pending[:] = still

            for op, arg in ops:
                if op == "get":
                    future = system.proxy.get_token(tenant_key=arg)
                    pending.append(future)
                    check_resolved()
                    try:
                        last[arg] = future.get(timeout=0)
                    except (pykka.Timeout, actors.TokenError):
                        pass
                elif op == "advance":
                    clock.advance(arg)
                    check_resolved()
                elif op == "fail":
                    server.script("any", *[Reply.http(503)] * arg)
                elif op == "invalidate" and arg in last:
                    system.proxy.invalidate(last[arg]).get(timeout=5)
                elif op == "rotate":
                    server.rotate()
                assert server.max_in_flight_per_key <= 1
            for _ in range(200):  # let retries and ticket waits run out
                if not pending:
                    break
                clock.advance(5)
                check_resolved()
            assert pending == [], "every get resolves once time moves on"
