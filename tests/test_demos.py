"""Demos are code: each runs to completion (smoke test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_demo(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEISHU_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "demos" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_quickstart_demo_runs_against_the_fake_server_and_prints_the_report() -> None:
    result = run_demo("quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "from 1 upstream request(s)" in result.stdout
    assert "-> True" in result.stdout and "-> False" in result.stdout
    assert "performance report" in result.stdout


def test_simulate_demo_runs_a_small_simulation() -> None:
    result = run_demo("simulate.py", "--tenants", "20", "--hours", "3", "--outage", "1:1.5")
    assert result.returncode == 0, result.stderr
    assert "20 tenants x 3 virtual hours" in result.stdout
    assert "performance report" in result.stdout


def test_simulate_demo_rejects_a_bad_outage_with_exit_code_2() -> None:
    result = run_demo("simulate.py", "--outage", "soon")
    assert result.returncode == 2
    assert "START_HOUR:END_HOUR" in result.stderr
    assert "Traceback" not in result.stderr
