"""The six scenarios of issue 5, by name, in running order. Each returns a
:class:`ScenarioResult`; none asserts a time. One module per scenario: ``scenario_<name>.py``."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.model import ScenarioResult, Sizes
from benchmarks.scenario_churn import churn
from benchmarks.scenario_common import Context
from benchmarks.scenario_expiry_storm import expiry_storm
from benchmarks.scenario_hit_path import hit_path
from benchmarks.scenario_scale import scale
from benchmarks.scenario_sdk_peer import sdk_peer
from benchmarks.scenario_slow_tenant import slow_tenant

__all__ = ["SCENARIOS"]


SCENARIOS: dict[str, Callable[[Sizes, Context], ScenarioResult]] = {
    "hit_path": hit_path,
    "churn": churn,
    "expiry_storm": expiry_storm,
    "slow_tenant": slow_tenant,
    "scale": scale,
    "sdk_peer": sdk_peer,
}
