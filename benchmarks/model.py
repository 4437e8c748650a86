"""What a scenario is and what it produces.

A scenario (one module, ``benchmarks/scenario_<name>.py``) builds one :class:`Scenario`: its run
function, its sizes for a full and a quick run, and the function that renders its section of
RESULTS.md. The registry (``benchmarks/scenarios.py``) lists them. A run produces a
:class:`ScenarioResult` (tables, goals and notes), serialised to JSON as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Goal", "Scenario", "ScenarioResult", "Section", "Table"]


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


class Section(Protocol):
    """Renders a scenario's section from its result alone: the Markdown body under its heading
    in RESULTS.md, or (``console=True``) the summary printed after it ran."""

    def __call__(self, result: ScenarioResult, *, console: bool = False) -> list[str]: ...


SizesT = TypeVar("SizesT")


@dataclasses.dataclass(frozen=True)
class Scenario(Generic[SizesT]):
    """One scenario, as the registry lists it. ``SizesT`` is the scenario's own (frozen) sizes
    type: every size and duration it uses, in a ``full`` and a ``quick`` (smoke run) instance."""

    name: str  # the results file (<name>.json) and --only NAME
    run: Callable[[SizesT], ScenarioResult]  # measures; never asserts a time
    full: SizesT
    quick: SizesT
    section: Section
    # Writes the scenario's other files (a plot...) into the results directory after a run
    # that measured it; returns a line to print (a file it could not write), or None.
    write_files: Callable[[ScenarioResult, Path], str | None] | None = None
    # Started in a background thread at the beginning of a quick run (whose numbers mean
    # nothing), to overlap a slow import with the scenarios before this one.
    preload: Callable[[], object] | None = None

    def measure(self, *, quick: bool) -> ScenarioResult:
        return self.run(self.quick if quick else self.full)
