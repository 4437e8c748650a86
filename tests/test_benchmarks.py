"""The benchmarks are code too: a quick run of every scenario finishes (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_scenario_runs_at_smoke_size(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    for title in ("Hit path", "Multi-tenant churn", "Expiry storm", "Slow tenant", "Scale"):
        assert title in results
