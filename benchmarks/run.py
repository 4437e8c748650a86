"""Run the benchmarks of issue 5 and write benchmarks/results/ (JSON, RESULTS.md, the CDF plot).

    python benchmarks/run.py                  # every scenario, full sizes (under 5 minutes)
    python benchmarks/run.py --only churn     # one scenario (repeatable)
    python benchmarks/run.py --quick          # smoke run of every scenario at tiny sizes

``--quick`` writes to a fresh temporary directory unless ``--out`` is given, so a smoke run
never overwrites the published results. Exit status 1 if any scenario raised; missed goals are
results, not failures.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from benchmarks import report
from benchmarks.baselines import lark_oapi_available
from benchmarks.model import ScenarioResult, Sizes
from benchmarks.scenario_common import Context
from benchmarks.scenarios import SCENARIOS

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="every scenario at tiny sizes (a smoke run, < 30 s)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
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
    elif args.quick:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick_run() if args.quick else Sizes.full()
    out = _out_dir(args)
    names = args.only or list(SCENARIOS)
    if sizes.quick and "sdk_peer" in names:
        # Importing lark-oapi takes ~5 s here; in a smoke run, overlap it with the scenarios
        # before (their numbers mean nothing anyway). A full run imports it when it gets there.
        threading.Thread(target=lark_oapi_available, name="bench-import", daemon=True).start()

    earlier, runs = report.load_results(out)
    ctx = Context(earlier)
    started = time.perf_counter()
    run = {
        "run_id": uuid.uuid4().hex[:12],
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": sizes.quick,
        "environment": report.environment(),
    }
    failed: list[str] = []
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = SCENARIOS[name](sizes, ctx)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        result.elapsed_s = time.perf_counter() - t0
        _note_errors(result)
        ctx.current[name] = result
        runs[name] = run
        report.write_json(result, out, run)
        for table in result.tables:
            print(f"{table.title}\n{report.render_table(table)}\n", flush=True)
        for goal in result.goals:
            print(f"goal: {goal.goal}: {goal.target}; measured {goal.measured}; met: {goal.met}")
        print(f"({result.elapsed_s:.1f} s)\n", flush=True)

    run["elapsed_s"] = time.perf_counter() - started
    results = {**earlier, **ctx.current}
    if "churn" in ctx.current and not report.plot_cdf(ctx.current["churn"], out / report.PLOT_NAME):
        print("matplotlib is not installed: no CDF plot (pip install matplotlib)")
    report.write_markdown(out, results, runs, run)
    print(f"results in {out} ({run['elapsed_s']:.1f} s in total)")
    if failed:
        print(f"scenarios that raised: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
