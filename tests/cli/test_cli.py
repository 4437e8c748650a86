"""The command line: every command runs, every user mistake is one line and a non-zero exit."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import actors
from actors._errors import mask_token
from actors.cli._main import main
from actors.testing import FakeFeishu
from tests.conftest import APP_ID, SECRET


@pytest.fixture(autouse=True)
def no_real_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands fall back to the embedded fake server only when no FEISHU_* variable is set."""
    for name in list(os.environ):
        if name.startswith("FEISHU_"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch, server: FakeFeishu) -> None:
    monkeypatch.setenv("FEISHU_APP_ID", APP_ID)
    monkeypatch.setenv("FEISHU_APP_SECRET", SECRET)
    monkeypatch.setenv("FEISHU_BASE_URL", server.base_url)


def assert_one_line_error(err: str) -> None:
    assert err.startswith("lark-token-actors: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [[], ["demo"], ["token"], ["simulate"], ["report"], ["serve-metrics"]],
    ids=lambda argv: " ".join(argv) or "top",
)
def test_help_is_available_for_every_command_and_exits_0(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lark-token-actors {' '.join(argv)}".rstrip())
    if not argv:
        for command in ("demo", "token", "simulate", "report", "serve-metrics", "keygen"):
            assert command in out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lark-token-actors {actors.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["token", "--kind", "user"], "invalid choice: 'user'"),
        (["simulate", "--tenants", "0"], "whole number >= 1"),
        (["simulate", "--hours", "soon"], "a number > 0"),
        (["simulate", "--failure-rate", "2"], "from 0 to 1"),
        (["simulate", "--outage", "soon"], "START_HOUR:END_HOUR"),
        (["simulate", "--outage", "3:2"], "end after it starts"),
        (["serve-metrics"], "required: --port"),
        (["serve-metrics", "--port", "99999"], "port number 0-65535"),
        (["--log-level", "LOUD", "demo"], "invalid choice: 'LOUD'"),
    ],
)
def test_a_usage_mistake_prints_one_line_and_exits_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err)
    assert says in captured.err
    assert captured.out == ""


def test_token_without_credentials_in_the_environment_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "FEISHU_APP_ID and FEISHU_APP_SECRET" in err


def test_token_with_half_the_credentials_names_the_missing_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEISHU_APP_ID", APP_ID)
    assert main(["token"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "set FEISHU_APP_SECRET" in err


@pytest.mark.usefixtures("fake_credentials")
def test_token_prints_the_token_masked_and_show_prints_it_whole(
    server: FakeFeishu, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token"]) == 0
    masked = capsys.readouterr().out
    assert main(["token", "--show"]) == 0
    whole = capsys.readouterr().out.strip()
    # The fake server hands out the same token while 30 minutes remain, as Feishu does.
    assert server.valid_token(whole)
    assert whole not in masked
    assert re.fullmatch(
        rf"tenant_access_token for {APP_ID}: {re.escape(mask_token(whole))} "
        r"\(valid for \d+ s\)\n",
        masked,
    )
    assert server.count("tenant") == 2


@pytest.mark.usefixtures("fake_credentials")
def test_token_of_kind_app_fetches_an_app_access_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "--kind", "app"]) == 0
    assert capsys.readouterr().out.startswith(f"app_access_token for {APP_ID}: a-")


@pytest.mark.usefixtures("fake_credentials")
def test_token_with_a_tenant_key_for_a_self_built_app_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "--tenant-key", "2ed263bf32cf1651"]) == 2
    assert_one_line_error(capsys.readouterr().err)


@pytest.mark.usefixtures("fake_credentials")
def test_token_rejected_by_feishu_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEISHU_APP_SECRET", "wrong-secret-value")
    assert main(["token"]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "10014" in err
    assert "wrong-secret-value" not in err


def test_token_with_a_bad_base_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEISHU_APP_ID", APP_ID)
    monkeypatch.setenv("FEISHU_APP_SECRET", SECRET)
    monkeypatch.setenv("FEISHU_BASE_URL", "open.feishu.cn")
    assert main(["token"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "base_url" in err
    assert SECRET not in err


def test_demo_runs_against_the_embedded_fake_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--callers", "8", "--warm-gets", "10"]) == 0
    out = capsys.readouterr().out
    assert "against the embedded fake Feishu" in out
    assert "8 concurrent callers got 1 token" in out
    assert "from 1 upstream request(s)" in out
    assert "-> True" in out and "-> False" in out
    assert "performance report" in out


def test_simulate_prints_the_simulation_report_and_the_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--tenants", "10", "--hours", "1"]) == 0
    captured = capsys.readouterr()
    assert "simulated 10 tenants x 1 virtual hours" in captured.out
    assert "wait for an answer" in captured.out  # and what it measures:
    assert "virtual seconds from a get to its answer" in captured.out
    assert "performance report" in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal


def test_report_prints_the_performance_report_of_a_short_workload(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["report", "--gets", "200", "--latency", "0"]) == 0
    out = capsys.readouterr().out
    assert "performance report" in out
    assert "failures        UpstreamError 1" in out
    assert "1 invalidations" in out


def test_serve_metrics_for_a_duration_prints_where_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve-metrics", "--port", "0", "--duration", "0"]) == 0
    assert re.match(r"serving metrics at http://127\.0\.0\.1:\d+/metrics", capsys.readouterr().out)


def test_serve_metrics_on_a_taken_port_prints_one_line_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeFeishu() as busy:  # any listening socket will do
        port = busy.base_url.rsplit(":", 1)[1]
        assert main(["serve-metrics", "--port", port, "--duration", "0"]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert f"127.0.0.1:{port}" in err


class Lines(io.StringIO):
    """A stdout that hands every complete line to a queue, so a test can wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self.lines.put(line)
        return len(text)


def test_serve_metrics_serves_parseable_metrics_until_ctrl_c_then_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout = Lines()
    monkeypatch.setattr(sys, "stdout", stdout)
    scraped: list[str] = []

    def scrape_then_interrupt() -> None:
        # Once the address is printed, main() waits for Ctrl-C (or the 30 s duration); without
        # it, main() has already failed and a signal would hit the test itself.
        try:
            # Generous: this only bounds a hang (a loaded CI machine starts slowly).
            url = stdout.lines.get(timeout=60).split()[3]
            scraped.append(requests.get(url, timeout=30).text)
        finally:
            # Ctrl-C, delivered to the main thread, where main() is waiting.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    # A process started in the background by a non-interactive shell inherits SIGINT as
    # ignored, and Python then leaves it ignored: install Python's own handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        scraper = threading.Thread(target=scrape_then_interrupt)
        scraper.start()
        code = main(["serve-metrics", "--port", "0", "--interval", "0.01", "--duration", "120"])
        scraper.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert capsys.readouterr().err == ""
    names = {family.name for family in text_string_to_metric_families(scraped[0])}
    assert {"lark_token_up", "lark_token_gets", "lark_token_get_latency_seconds"} <= names


def test_python_dash_m_actors_help_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actors", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lark-token-actors")


def test_commands_that_do_not_ask_for_the_fake_never_import_the_test_double(
    server: FakeFeishu,
) -> None:
    # In a fresh interpreter, with real credentials (for an app of the fake server this process
    # runs): the help texts, a token fetch and serve-metrics. Only demo, report and simulate, and
    # the other commands without credentials, may load actors.testing.
    script = """
import contextlib, io, sys
from actors.cli import main
runs = [["--help"], ["token", "--help"], ["serve-metrics", "--help"], ["token"],
        ["serve-metrics", "--port", "0", "--duration", "0"]]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes = [main(argv) for argv in runs]
print(codes, sorted(name for name in sys.modules if name.startswith("actors.testing")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEISHU_")}
    env.update(FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=SECRET, FEISHU_BASE_URL=server.base_url)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0, 0, 0, 0] []"
    assert server.count("tenant") >= 1  # the token command did reach the server
