"""Run the benchmarks and write benchmarks/results/ (one JSON file per scenario, RESULTS.md).

    python benchmarks/run.py                  # every scenario at full size (minutes)
    python benchmarks/run.py --only churn     # one scenario (repeatable)
    python benchmarks/run.py --quick          # a smoke run of every scenario at tiny sizes
    python benchmarks/run.py --render         # rewrite RESULTS.md from the JSON files alone

Each scenario compares systems side by side in one run against the fake Feishu server
(``python -m actors.testing serve``, a process of its own) and reports ratios. ``--quick``
writes to a fresh temporary directory unless ``--out`` is given, so a smoke run never
overwrites the published results. Exit status 1 if a scenario raised; a missed goal is a
result, not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from benchmarks import (
    churn,
    cold_miss,
    expiry_storm,
    hit_path,
    sdk_peer,
    shared_store,
    slow_tenant,
    user_rotations,
)
from benchmarks.harness import Result, Scenario, render_section

# In running and report order.
SCENARIOS: list[Scenario[Any]] = [
    hit_path.SCENARIO,
    cold_miss.SCENARIO,
    churn.SCENARIO,
    expiry_storm.SCENARIO,
    slow_tenant.SCENARIO,
    sdk_peer.SCENARIO,
    shared_store.SCENARIO,
    user_rotations.SCENARIO,
]
RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=RESULTS.parent, check=True
        )
        return done.stdout.strip()

    try:
        # The code measured is the working tree's: say so when it differs from the commit.
        dirty = git("status", "--porcelain", "--", ":/actors") != ""  # from the repo root
        commit = git("rev-parse", "--short", "HEAD") + (
            " with uncommitted changes" if dirty else ""
        )
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other work on the machine when the run started (1 min): the figures are noisier.
        "load_average": os.getloadavg()[0],
        "commit": commit,
        **{name: package(name) for name in ("lark-token-actors", "pykka", "requests", "lark-oapi")},
    }


def load(out: Path) -> dict[str, tuple[Result, dict[str, Any]]]:
    """Every scenario's result found in ``out``, with the metadata of the run that wrote it."""
    found = {}
    for scenario in SCENARIOS:
        try:
            data = json.loads((out / f"{scenario.name}.json").read_text(encoding="utf-8"))
            run = data.pop("run", {})
            result = Result.from_json(data)
            result.extra.setdefault("commit", run.get("environment", {}).get("commit"))
            found[scenario.name] = (result, run)
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return found


def markdown(results: dict[str, tuple[Result, dict[str, Any]]]) -> str:
    latest = max((run for _, run in results.values()), key=lambda r: str(r.get("started_at")))
    env = latest.get("environment", {})
    lines = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/run.py` (`just bench`); the JSON files beside this one "
        "hold every number. Within a scenario every system runs against the same fake Feishu "
        "(`python -m actors.testing serve`, loopback HTTP, a process of its own) in the same "
        "run: compare ratios within a table, not absolute times across machines or runs.",
        "",
        f"- latest run: {latest.get('started_at')}"
        + (
            " (**quick smoke run: the sizes are too small to mean anything**)"
            * latest.get("quick", False)
        ),
        f"- machine: {env.get('cpus')} CPUs, {env.get('platform')}, {env.get('python')}, "
        f"load average {env.get('load_average', 0):.2f} when the run started",
        f"- versions: lark-token-actors {env.get('lark-token-actors')} (commit "
        f"{env.get('commit')}), pykka {env.get('pykka')}, requests {env.get('requests')}, "
        f"lark-oapi {env.get('lark-oapi') or 'not installed'}",
        "",
        "## Goals",
        "",
        "| scenario | goal | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for result, _ in results.values():
        for g in result.goals:
            met = {True: "yes", False: "**no**", None: "–"}[g.met]
            lines.append(f"| {result.title} | {g.goal} | {g.target} | {g.measured} | {met} |")
    lines.append("")
    for result, run in results.values():
        lines += [f"## {result.title}", ""]
        if run.get("run_id") != latest.get("run_id"):
            commit = run.get("environment", {}).get("commit")
            lines += [f"*From an earlier run ({run.get('started_at')}, commit {commit}).*", ""]
        lines += render_section(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario at tiny sizes")
    parser.add_argument(
        "--only", action="append", choices=[s.name for s in SCENARIOS], metavar="NAME"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results (quick: a temp dir)")
    args = parser.parse_args(argv)
    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="bench-")) if args.quick and not args.render else RESULTS
    )
    out.mkdir(parents=True, exist_ok=True)
    results = load(out)
    run = {
        "run_id": os.urandom(6).hex(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "environment": environment(),
    }
    failed = []
    for scenario in [] if args.render else SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        print(f"== {scenario.name}", flush=True)
        started = time.perf_counter()
        try:
            result = scenario.measure(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(scenario.name)
            continue
        result.elapsed_s = time.perf_counter() - started
        result.extra["commit"] = run["environment"]["commit"]
        if scenario.compare is not None and scenario.name in results:
            scenario.compare(result, results[scenario.name][0])
        results[scenario.name] = (result, run)
        payload = {"run": run, **result.to_json()}
        text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
        (out / f"{scenario.name}.json").write_text(text, encoding="utf-8")
        print("\n".join(render_section(result, console=True)), flush=True)
        if scenario.write_files is not None and (message := scenario.write_files(result, out)):
            print(message)
    if not results:
        print(f"no results in {out}", file=sys.stderr)
        return 1
    ordered = {s.name: results[s.name] for s in SCENARIOS if s.name in results}
    (out / "RESULTS.md").write_text(markdown(ordered), encoding="utf-8")
    print(f"results in {out}")
    if failed:
        print(f"scenarios that raised: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
