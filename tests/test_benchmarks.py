"""The benchmarks are code too: a quick run of every scenario finishes (no timing asserted),
RESULTS.md renders from the committed JSON files alone, and the fake server's child process
never outlives the runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks.scenarios import SCENARIOS
from benchmarks.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "benchmarks" / "results"


def _run(out: Path, *args: str) -> str:
    """``benchmarks/run.py ARGS --out OUT``; its stdout. Then every registered scenario has its
    JSON file in ``out`` and its section in RESULTS.md."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = (out / "RESULTS.md").read_text(encoding="utf-8")
    for scenario in SCENARIOS:
        title = json.loads((out / f"{scenario.name}.json").read_text(encoding="utf-8"))["title"]
        assert f"\n## {title}\n" in results
    return result.stdout


def test_every_benchmark_scenario_runs_at_smoke_size(tmp_path: Path) -> None:
    printed = _run(tmp_path, "--quick")
    # A quick churn window is shorter than a token lifetime: the run says its ratios mean nothing.
    assert "window is shorter than one" in printed


def test_results_render_from_the_committed_json_alone(tmp_path: Path) -> None:
    for scenario in SCENARIOS:
        shutil.copy(COMMITTED / f"{scenario.name}.json", tmp_path)
    _run(tmp_path, "--render")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_server_process_serves_counts_and_stops() -> None:
    with ServerProcess(token_lifetime=60.0, refresh_window=15.0) as server:
        pid = server.pid
        assert pid is not None
        server.add_app("cli_a", "secret-a")
        started = time.monotonic()
        reply = requests.post(
            server.base_url + "/open-apis/auth/v3/tenant_access_token/internal",
            json={"app_id": "cli_a", "app_secret": "secret-a"},
            timeout=10,
        )
        assert reply.json()["code"] == 0
        assert server.count(app_id="cli_a", start=started, end=time.monotonic()) == 1
        assert server.count(app_id="cli_other") == 0
    assert _gone_within(pid, 5.0)


def test_the_server_process_dies_with_a_killed_runner() -> None:
    """A runner killed outright (no cleanup at all) leaves no server behind: the child sees EOF
    on its stdin."""
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from benchmarks.server_process import ServerProcess\n"
            "print(ServerProcess().start().pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert runner.stdout is not None
        child = int(runner.stdout.readline())
        assert _alive(child)
    finally:
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
    assert _gone_within(child, 10.0)
