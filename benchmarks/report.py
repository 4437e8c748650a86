"""Results on disk: one JSON file per scenario and RESULTS.md, assembled from the scenarios'
own sections in registry order (each scenario also writes its other files, such as a plot)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.model import ScenarioResult
from benchmarks.scenarios import SCENARIOS

__all__ = [
    "environment",
    "latest_run",
    "load_results",
    "render_markdown",
    "write_json",
    "write_markdown",
]


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
        # Other work on the machine when the run started (1, 5, 15 min): the runs are noisier.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
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
    """Every registered scenario's result found in ``out``, with the run metadata it was
    written with (for RESULTS.md only: no scenario reads these)."""
    results: dict[str, ScenarioResult] = {}
    runs: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        path = out / f"{scenario.name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            runs[scenario.name] = data.pop("run", {})
            results[scenario.name] = ScenarioResult.from_json(data)
        except (ValueError, TypeError, KeyError):
            continue
    return results, runs


def latest_run(
    results: dict[str, ScenarioResult], runs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The metadata of the most recent run among ``runs`` (to render RESULTS.md from the JSON
    files alone); its total time is that of its scenarios when the files do not say."""
    if not runs:
        return {}
    newest: dict[str, Any] = max(runs.values(), key=lambda run: str(run.get("started_at", "")))
    latest = dict(newest)
    if "elapsed_s" not in latest:
        mine = [name for name, run in runs.items() if run.get("run_id") == latest.get("run_id")]
        latest["elapsed_s"] = sum(results[name].elapsed_s for name in mine)
    return latest


def _goal_rows(results: dict[str, ScenarioResult]) -> list[str]:
    lines = ["| scenario | goal | target | measured | met |", "|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        result = results.get(scenario.name)
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
        "every number. Within a scenario, all systems run against the same loopback fake "
        "Feishu (`actors.testing.FakeFeishu`, real HTTP) in the same run: in a child process of "
        "its own in the churn scenario (so that its CPU does not take the callers' GIL), in the "
        "benchmark's process elsewhere. Compare ratios within a table, not absolute times across "
        "machines or runs.",
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
        f"(GIL switch interval {env.get('switch_interval_s', 0) * 1e3:g} ms)"
        + (
            f", load average {env['load_average'][0]:.2f} when the run started"
            if env.get("load_average")
            else ""
        ),
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
    for scenario in SCENARIOS:
        result = results.get(scenario.name)
        if result is None:
            continue
        run = runs.get(scenario.name, {})
        lines += [f"## {result.title}", ""]
        if run.get("run_id") != current.get("run_id"):
            lines += [f"*From an earlier run ({run.get('started_at', '?')}).*", ""]
        lines += scenario.section(result)
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
