"""Results on disk: one JSON file per scenario, RESULTS.md (Markdown tables) and the CDF plot."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.model import ScenarioResult, Table

__all__ = [
    "environment",
    "load_results",
    "plot_cdf",
    "render_markdown",
    "render_table",
    "write_json",
    "write_markdown",
]

ORDER = ["hit_path", "churn", "expiry_storm", "slow_tenant", "scale", "sdk_peer"]
PLOT_NAME = "latency_cdf.png"

_HEADERS = {
    "system": "system",
    "throughput": "gets/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "max_ms": "max ms",
    "vs_mutex_x": "× mutex",
    "vs_oracle_x": "× oracle",
    "vs_lark_oapi_x": "× lark-oapi",
    "upstream": "upstream requests",
    "peak_concurrent": "peak concurrent requests",
    "slow_p50_ms": "slow tenant p50 ms",
    "slow_p99_ms": "slow tenant p99 ms",
    "slow_max_ms": "slow tenant max ms",
    "actors_vs_mutex_x": "actors ÷ mutex",
    "actors_vs_future_floor_x": "actors ÷ future floor",
    "mailbox_vs_mutex_x": "mailbox-only ÷ mutex",
    "mailbox_vs_pykka_ask_x": "mailbox-only ÷ pykka ask",
    "actors_vs_mailbox_x": "actors ÷ mailbox-only",
    "schedule_ns": "schedule ns/op",
    "cancel_ns": "cancel ns/op",
    "vs_smallest_x": "cost ÷ smallest",
    "sortedlist_ns": "bare SortedList add+remove ns",
    "sortedlist_vs_smallest_x": "SortedList ÷ smallest",
    "log_n_ratio_x": "log n ÷ log smallest",
    "tracemalloc_bytes_per_key": "bytes/key (tracemalloc)",
    "rss_bytes_per_key": "bytes/key (RSS)",
    "populate_s": "cache fill s",
    "prewarm_s": "prewarm all s",
    "prewarm_keys_per_s": "prewarms/s",
    "prewarm_us_per_key": "µs/key",
}
_INTS = {
    "threads",
    "gets",
    "callers",
    "upstream",
    "peak_concurrent",
    "errors",
    "keys",
    "timers",
    "prewarms",
}


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if column in _INTS:
        return f"{int(value):,}"
    x = float(value)
    if column.endswith("_x"):
        if x >= 100:
            return f"{x:,.0f}×"
        return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"
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


def render_table(table: Table) -> str:
    heads = [_HEADERS.get(c, c.replace("_", " ")) for c in table.columns]
    right = [c != "system" for c in table.columns]
    lines = [
        "| " + " | ".join(heads) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    for row in table.rows:
        cells = [_fmt(c, row.get(c)) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "switch_interval_s": sys.getswitchinterval(),
        "lark-token-actors": package("lark-token-actors"),
        "pykka": package("pykka"),
        "requests": package("requests"),
        "lark-oapi": package("lark-oapi"),
        "matplotlib": package("matplotlib"),
        "commit": commit,
    }


def write_json(result: ScenarioResult, out: Path, run: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.name}.json"
    payload = {"run": run, **result.to_json()}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_results(out: Path) -> tuple[dict[str, ScenarioResult], dict[str, dict[str, Any]]]:
    """Every scenario result found in ``out``, with the run metadata it was written with."""
    results: dict[str, ScenarioResult] = {}
    runs: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            runs[name] = data.pop("run", {})
            results[name] = ScenarioResult.from_json(data)
        except (ValueError, TypeError, KeyError):
            continue
    return results, runs


def _goal_rows(results: dict[str, ScenarioResult]) -> list[str]:
    lines = ["| scenario | goal | target | measured | met |", "|---|---|---|---|---|"]
    for name in ORDER:
        result = results.get(name)
        if result is None:
            continue
        for goal in result.goals:
            met = {True: "yes", False: "**no**", None: "–"}[goal.met]
            lines.append(
                f"| {result.title} | {goal.goal} | {goal.target} | {goal.measured} | {met} |"
            )
    return lines


def render_markdown(
    results: dict[str, ScenarioResult], runs: dict[str, dict[str, Any]], current: dict[str, Any]
) -> str:
    env = current.get("environment", {})
    lines = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/run.py` (`just bench`); the JSON files beside this one hold "
        "every number. All systems run against the same loopback fake Feishu "
        "(`actors.testing.FakeFeishu`, real HTTP) in the same process and the same run: compare "
        "ratios within a table, not absolute times across machines or runs.",
        "",
        f"- run: {current.get('started_at', '?')}"
        + (
            " (**quick smoke run: sizes too small to mean anything**)"
            if current.get("quick")
            else ""
        )
        + (f", {current['elapsed_s']:.0f} s in total" if "elapsed_s" in current else ""),
        f"- machine: {env.get('cpus')} CPUs, {env.get('platform')}, "
        f"{env.get('implementation')} {env.get('python')} "
        f"(GIL switch interval {env.get('switch_interval_s', 0) * 1e3:g} ms)",
        f"- versions: lark-token-actors {env.get('lark-token-actors')} (commit "
        f"{env.get('commit')}), pykka {env.get('pykka')}, requests {env.get('requests')}, "
        f"lark-oapi {env.get('lark-oapi') or 'not installed'}",
        "- latency: every get is timed on its own with `time.perf_counter_ns` (adds ~0.1 µs; the "
        "`oracle` rows show the harness floor); throughput = gets started in the measured window "
        "÷ time from the window start to the completion of the last of them.",
        "",
        "## Goals",
        "",
        *_goal_rows(results),
        "",
    ]
    for name in ORDER:
        result = results.get(name)
        if result is None:
            continue
        run = runs.get(name, {})
        lines += [f"## {result.title}", ""]
        if run.get("run_id") != current.get("run_id"):
            lines += [f"*From an earlier run ({run.get('started_at', '?')}).*", ""]
        lines += [result.method, ""]
        for table in result.tables:
            lines += [f"**{table.title}**", "", render_table(table), ""]
        if name == "churn":
            lines += [f"![latency CDF per system, scenario 2]({PLOT_NAME})", ""]
        for note in result.notes:
            lines.append(f"- {note}")
        if result.notes:
            lines.append("")
        lines += [f"*Scenario wall time: {result.elapsed_s:.1f} s.*", ""]
    return "\n".join(lines)


def write_markdown(
    out: Path,
    results: dict[str, ScenarioResult],
    runs: dict[str, dict[str, Any]],
    current: dict[str, Any],
) -> Path:
    path = out / "RESULTS.md"
    path.write_text(render_markdown(results, runs, current), encoding="utf-8")
    return path


def plot_cdf(result: ScenarioResult, path: Path) -> bool:
    """Latency CDF (and tail) per system for scenario 2; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cdf: dict[str, list[list[float]]] = result.extra.get("cdf_ms", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for system, points in cdf.items():
        if not points:
            continue
        xs = [max(p[0], 1e-4) for p in points]
        ys = [p[1] for p in points]
        left.step(xs, ys, where="post", label=system)
        tail = [(x, 1.0 - y) for x, y in zip(xs, ys, strict=True) if y < 1.0]
        right.step([t[0] for t in tail], [t[1] for t in tail], where="post", label=system)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("get latency (ms, log scale)")
        axis.grid(True, which="both", alpha=0.3)
    left.set_ylabel("fraction of gets ≤ latency")
    left.set_title("Scenario 2: latency CDF")
    right.set_yscale("log")
    right.set_ylabel("fraction of gets > latency")
    right.set_title("Tail (1 − CDF)")
    right.set_ylim(1e-4, 1.0)
    left.legend(loc="lower right", fontsize="small")
    params = result.params
    fig.suptitle(
        f"{params.get('tenants')} tenants, {params.get('callers')} callers, "
        f"{params.get('upstream_latency_s', 0) * 1e3:g} ms upstream, "
        f"{params.get('token_lifetime_s')} s tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
