"""Run the benchmarks of issue 5 and write benchmarks/results/ (JSON, RESULTS.md, the CDF plot).

    python benchmarks/run.py                  # every scenario, full sizes (about 5 minutes)
    python benchmarks/run.py --only churn     # one scenario (repeatable)
    python benchmarks/run.py --quick          # smoke run of every scenario at tiny sizes
    python benchmarks/run.py --render         # rewrite RESULTS.md from the JSON files alone

The scenarios, their sizes and their report sections are in the registry
(``benchmarks/scenarios.py``). ``--quick`` writes to a fresh temporary directory unless ``--out``
is given, so a smoke run never overwrites the published results. Exit status 1 if any scenario
raised; missed goals are results, not failures.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from benchmarks import report
from benchmarks.model import ScenarioResult
from benchmarks.scenarios import SCENARIOS, by_name

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = list(by_name())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="every scenario at tiny sizes (a smoke run, < 30 s)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)}",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite RESULTS.md in the output directory from its JSON files",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: benchmarks/results; with --quick a temporary one)",
    )
    return parser.parse_args(argv)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        out: Path = args.out
    elif args.quick and not args.render:
        out = Path(tempfile.mkdtemp(prefix="lark-token-actors-bench-"))
    else:
        out = RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return out


def _note_errors(result: ScenarioResult) -> None:
    """Failed gets are timed and counted like the others: say so next to the table."""
    for table in result.tables:
        for row in table.rows:
            if row.get("errors"):
                first = row.get("first_error")
                result.notes.append(
                    f"**{row.get('system')}** ({table.title}): {row['errors']:,} gets raised "
                    "an exception (still timed and counted above)"
                    + (f"; the first: `{first}`." if first else ".")
                )


def render(out: Path) -> int:
    results, runs = report.load_results(out)
    if not results:
        print(f"no results in {out}", file=sys.stderr)
        return 1
    path = report.write_markdown(out, results, runs, report.latest_run(results, runs))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = _out_dir(args)
    if args.render:
        return render(out)
    chosen = set(args.only or by_name())
    scenarios = [scenario for scenario in SCENARIOS if scenario.name in chosen]
    if args.quick:
        for scenario in scenarios:
            if scenario.preload is not None:
                threading.Thread(target=scenario.preload, name="bench-preload", daemon=True).start()

    results, runs = report.load_results(out)  # for RESULTS.md: the sections not run now
    started = time.perf_counter()
    run: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12],
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "environment": report.environment(),
    }
    measured: list[ScenarioResult] = []
    failed: list[str] = []
    for scenario in scenarios:
        print(f"== {scenario.name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = scenario.measure(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(scenario.name)
            continue
        result.elapsed_s = time.perf_counter() - t0
        _note_errors(result)
        measured.append(result)
        results[scenario.name], runs[scenario.name] = result, run
        report.write_json(result, out, run)
        print("\n".join(scenario.section(result, console=True)), flush=True)

    run["elapsed_s"] = time.perf_counter() - started
    for scenario in scenarios:
        if scenario.write_files is not None and scenario.name in {r.name for r in measured}:
            message = scenario.write_files(results[scenario.name], out)
            if message:
                print(message)
    report.write_markdown(out, results, runs, run)
    print(f"results in {out} ({run['elapsed_s']:.1f} s in total)")
    if failed:
        print(f"scenarios that raised: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
