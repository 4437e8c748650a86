"""The registry: the scenarios of issue 5, in running (and report) order.

A scenario is one module, ``scenario_<name>.py``, that defines a :class:`~benchmarks.model.Scenario`
named ``SCENARIO``: its run function, its sizes (``full`` and ``quick``) and its report section.
It measures everything it compares with in its own run and reads no other scenario's results.
Adding one: write the module, add its line below.
"""

from __future__ import annotations

from typing import Any

from benchmarks import (
    scenario_churn,
    scenario_expiry_storm,
    scenario_hit_path,
    scenario_scale,
    scenario_sdk_peer,
    scenario_shared_store,
    scenario_slow_tenant,
)
from benchmarks.model import Scenario

__all__ = ["SCENARIOS", "by_name"]

SCENARIOS: list[Scenario[Any]] = [
    scenario_hit_path.SCENARIO,
    scenario_churn.SCENARIO,
    scenario_expiry_storm.SCENARIO,
    scenario_slow_tenant.SCENARIO,
    scenario_scale.SCENARIO,
    scenario_sdk_peer.SCENARIO,
    scenario_shared_store.SCENARIO,
]


def by_name() -> dict[str, Scenario[Any]]:
    return {scenario.name: scenario for scenario in SCENARIOS}
