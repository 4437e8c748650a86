"""Demos are code: each runs to completion (smoke test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_demo_runs_against_the_fake_server_and_prints_the_report() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEISHU_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "from 1 upstream request(s)" in result.stdout
    assert "-> True" in result.stdout and "-> False" in result.stdout
    assert "performance report" in result.stdout
