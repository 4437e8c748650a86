"""Rendering shared by the scenarios' sections: Markdown tables and the standard section layout.

Column headers and number formats: a column's unit is in its name (``_us``, ``_ms``, ``_s``,
``_x`` for ratios); the columns every scenario may use are named here, and a scenario passes the
headers (and integer columns) of its own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from benchmarks.model import ScenarioResult, Table

__all__ = ["section", "table"]

HEADERS = {
    "system": "system",
    "throughput": "gets/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "max_ms": "max ms",
    "vs_mutex_x": "× mutex",
    "vs_oracle_x": "× oracle",
    "upstream": "upstream requests",
    "peak_concurrent": "peak concurrent requests",
}
INTS = frozenset({"threads", "gets", "callers", "upstream", "peak_concurrent", "errors"})


def _fmt(column: str, value: Any, ints: Collection[str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if column in INTS or column in ints:
        return f"{int(value):,}"
    x = float(value)
    if column.endswith("_x"):
        if x >= 100:
            return f"{x:,.0f}×"
        return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"
    if column.endswith("_us"):
        return f"{x:,.0f}" if x >= 100 else (f"{x:.2f}" if x >= 1 else f"{x:.3f}")
    if column.endswith("_ms"):
        if x >= 100:
            return f"{x:,.0f}"
        if x >= 10:
            return f"{x:.1f}"
        if x >= 1:
            return f"{x:.2f}"
        return f"{x:.3f}"
    if column.endswith("_s") and not column.endswith("per_s"):
        return f"{x:.2f}"
    return f"{x:,.0f}"


def table(data: Table, headers: Mapping[str, str] | None = None, ints: Collection[str] = ()) -> str:
    """A Markdown table; ``headers`` and ``ints`` add the scenario's own columns to the shared
    ones (a column named in neither is headed by its name with spaces)."""
    heads = {**HEADERS, **(headers or {})}
    lines = [
        "| " + " | ".join(heads.get(c, c.replace("_", " ")) for c in data.columns) + " |",
        "|" + "|".join("---" if c == "system" else "---:" for c in data.columns) + "|",
    ]
    for row in data.rows:
        lines.append("| " + " | ".join(_fmt(c, row.get(c), ints) for c in data.columns) + " |")
    return "\n".join(lines)


def section(
    result: ScenarioResult,
    *,
    console: bool = False,
    headers: Mapping[str, str] | None = None,
    ints: Collection[str] = (),
    figures: Sequence[str] = (),
) -> list[str]:
    """The standard section: the method, every table, ``figures`` (Markdown lines, RESULTS.md
    only), the notes and the wall time. ``console``: the printed summary instead (no method and
    no figures; the goals, which RESULTS.md gathers in a table of its own)."""
    lines = [] if console else [result.method, ""]
    for data in result.tables:
        title = data.title if console else f"**{data.title}**"
        lines += [title, "", table(data, headers, ints), ""]
    if not console and figures:
        lines += [*figures, ""]
    lines += [f"- {note}" for note in result.notes]
    if result.notes:
        lines.append("")
    if console:
        lines += [
            f"goal: {g.goal}: {g.target}; measured {g.measured}; met: {g.met}" for g in result.goals
        ]
        lines += [f"({result.elapsed_s:.1f} s)", ""]
    else:
        lines += [f"*Scenario wall time: {result.elapsed_s:.1f} s.*", ""]
    return lines
