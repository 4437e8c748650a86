"""The benchmarks are code too: a smoke run of every scenario finishes (no timing asserted), the
user-rotation scenario's counts hold at smoke size, and RESULTS.md renders from the committed
JSON files alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One smoke run of every scenario, for the tests that read it: its directory and stdout."""
    out = tmp_path_factory.mktemp("smoke")
    return out, _run(out, "--quick")


def test_every_benchmark_scenario_runs_at_smoke_size(smoke: tuple[Path, str]) -> None:
    out, printed = smoke
    assert "Smoke run" in printed
    assert (out / "latency_cdf.png").is_file()


def test_the_user_rotation_scenario_redeems_every_refresh_token_once_at_smoke_size(
    smoke: tuple[Path, str],
) -> None:
    out, _ = smoke
    data = json.loads((out / "user_rotations.json").read_text(encoding="utf-8"))
    rows = [row for table in data["tables"] for row in table["rows"]]
    assert rows
    for row in rows:
        assert row["redemptions"] == row["rotations"] > 0, row
        assert (row["reuses"], row["reauthorizations"]) == (0, 0), row


def test_results_render_from_the_committed_json_alone(tmp_path: Path) -> None:
    for scenario in SCENARIOS:
        shutil.copy(COMMITTED / f"{scenario.name}.json", tmp_path)
    _run(tmp_path, "--render")
