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
    assert "await aget_token() -> the cached token: True" in result.stdout
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


def test_lark_sdk_demo_calls_business_apis_and_recovers_from_a_revoked_token() -> None:
    result = run_demo("lark_sdk.py")
    assert result.returncode == 0, result.stderr
    assert "1. im.v1.chat.list -> code 0" in result.stdout
    assert "2. after the token was revoked: code 0; the server saw 2 calls" in result.stdout
    assert "3. im.v1.message.create -> code 0, om_" in result.stdout
    assert "4. im.v1.chat.alist after another revocation -> code 0" in result.stdout
    assert "2 invalidations" in result.stdout


def test_event_server_demo_gets_a_marketplace_token_through_a_pushed_ticket() -> None:
    result = run_demo("event_server.py")
    assert result.returncode == 0, result.stderr
    assert "-> {'challenge': 'ch-42'}" in result.stdout
    assert "event decrypted, signature and token checked" in result.stdout
    assert "the endpoint answered HTTP 200" in result.stdout
    assert "(accepted by Feishu: True)" in result.stdout
    assert "Traceback" not in result.stderr
