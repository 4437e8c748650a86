"""The benchmarks are code too: a smoke run of every scenario finishes (no timing asserted) and
RESULTS.md renders from the committed JSON files alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.run import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "benchmarks" / "results"


def _run(out: Path, *args: str) -> str:
    """``benchmarks/run.py ARGS --out OUT``; its stdout. Every scenario then has its JSON file
    in ``out`` and its section in RESULTS.md."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = (out / "RESULTS.md").read_text(encoding="utf-8")
    for scenario in SCENARIOS:
        title = json.loads((out / f"{scenario.name}.json").read_text(encoding="utf-8"))["title"]
        assert f"\n## {title}\n" in results
    return done.stdout


def test_every_benchmark_scenario_runs_at_smoke_size(tmp_path: Path) -> None:
    printed = _run(tmp_path, "--quick")
    assert "Smoke run" in printed
    assert (tmp_path / "latency_cdf.png").is_file()


def test_results_render_from_the_committed_json_alone(tmp_path: Path) -> None:
    for scenario in SCENARIOS:
        shutil.copy(COMMITTED / f"{scenario.name}.json", tmp_path)
    _run(tmp_path, "--render")
