"""What a scenario produces: tables, goals and notes, serialised to JSON as they are."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Goal", "ScenarioResult", "Sizes", "Table"]


@dataclasses.dataclass
class Table:
    """Rows are dicts keyed by ``columns`` (units are in the column names: ``_ms``, ``_x``...)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Goal:
    goal: str
    target: str
    measured: str
    met: bool | None  # None: could not be evaluated in this run


@dataclasses.dataclass
class ScenarioResult:
    name: str
    title: str
    method: str  # what was run, how, with which parameters (Markdown)
    params: dict[str, Any]
    tables: list[Table] = dataclasses.field(default_factory=list)
    goals: list[Goal] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScenarioResult:
        tables = [Table(**t) for t in data.get("tables", [])]
        goals = [Goal(**g) for g in data.get("goals", [])]
        fields = {f.name for f in dataclasses.fields(cls)} - {"tables", "goals"}
        kept = {k: v for k, v in data.items() if k in fields}
        return cls(tables=tables, goals=goals, **kept)

    def table(self, title_prefix: str) -> Table | None:
        for table in self.tables:
            if table.title.startswith(title_prefix):
                return table
        return None


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size and duration of a run; ``quick()`` is the smoke-test variant."""

    quick: bool = False
    # 1. hit path
    hit_threads: tuple[int, ...] = (1, 4, 16, 64)
    hit_warmup_s: float = 0.1
    hit_measure_s: float = 0.9
    hit_reps: int = 3  # interleaved rounds per cell, pooled
    # 2. multi-tenant churn (and 4. slow tenant, which reuses its workload)
    churn_tenants: int = 48
    churn_callers: int = 16
    churn_think_s: float = 0.001
    churn_latency_s: float = 0.150
    churn_lifetime_s: float = 4.0
    churn_window_s: float = 1.0
    churn_margin_s: float = 0.1
    churn_lead_s: float = 0.6
    churn_warmup_s: float = 1.5
    churn_measure_s: float = 4.0  # >= churn_lifetime_s: every key refreshes inside the window
    # 3. expiry storm
    storm_callers: int = 64
    storm_latency_s: float = 0.150
    storm_lifetime_s: float = 2.0
    storm_window_s: float = 1.0
    storm_margin_s: float = 0.3
    storm_lead_s: float = 0.8
    # 4. slow tenant
    slow_latency_s: float = 2.0
    slow_measure_s: float = 4.0
    # 5. scale
    scale_keys: tuple[int, ...] = (10_000, 100_000)
    index_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    index_ops: int = 50_000
    scale_fake_keys: int = 5_000  # prewarm through FakeFeishu's in-process adapter (0: skip)
    # 6. the official SDK
    sdk_callers: int = 64
    sdk_latency_s: float = 0.150
    sdk_measure_s: float = 0.6

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def quick_run(cls) -> Sizes:
        return cls(
            quick=True,
            hit_threads=(1, 16),
            hit_reps=1,
            hit_warmup_s=0.02,
            hit_measure_s=0.08,
            churn_tenants=6,
            churn_callers=4,
            churn_latency_s=0.02,
            churn_lifetime_s=1.0,
            churn_window_s=1.0,
            churn_margin_s=0.1,
            churn_lead_s=0.3,
            churn_warmup_s=0.2,
            churn_measure_s=0.3,
            storm_callers=16,
            storm_latency_s=0.02,
            storm_lifetime_s=1.0,
            storm_window_s=1.0,
            storm_margin_s=0.5,
            storm_lead_s=0.7,
            slow_latency_s=0.2,
            slow_measure_s=0.4,
            scale_keys=(300, 1_000),
            index_sizes=(1_000, 10_000),
            index_ops=5_000,
            scale_fake_keys=300,
            sdk_callers=16,
            sdk_latency_s=0.02,
            sdk_measure_s=0.08,
        )
