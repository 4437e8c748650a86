"""``python -m actors.testing serve``: the fake Feishu in a real child process, read and steered
over HTTP, and stopped by signals, by its stdin pipe's EOF or with its parent.

Every wait is bounded: a child's URL is its first stdout line, its exit is ``wait(timeout)``
(or, for a grandchild, a pidfd becoming readable)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

import actors
from actors.testing import FakeFeishuProcess

TIMEOUT = 30.0  # a cold interpreter on a loaded machine; only bounds a hang
TENANT_INTERNAL = "/open-apis/auth/v3/tenant_access_token/internal"
APP_STORE = "/open-apis/auth/v3/app_access_token"
TENANT_STORE = "/open-apis/auth/v3/tenant_access_token"


@contextmanager
def serving(
    *args: str, stdin: int = subprocess.DEVNULL
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``serve ARGS`` in a child; the child and the URL it printed. Killed on the way out."""
    child = subprocess.Popen(
        [sys.executable, "-m", "actors.testing", "serve", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield child, first_line(child)
    finally:
        reap(child)


def first_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], TIMEOUT)
    assert ready, "the child printed nothing"
    return child.stdout.readline().strip()


def reap(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(TIMEOUT)
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_prints_the_url_it_listens_on_and_serves_the_apps_it_is_given() -> None:
    port = free_port()
    with serving("--port", str(port), "--app", "cli_a:secret-a") as (_, url):
        assert url == f"http://127.0.0.1:{port}"
        ok = requests.post(
            url + TENANT_INTERNAL, json={"app_id": "cli_a", "app_secret": "secret-a"}
        )
        wrong = requests.post(url + TENANT_INTERNAL, json={"app_id": "cli_a", "app_secret": "no"})
    assert ok.json()["code"] == 0 and ok.json()["tenant_access_token"].startswith("t-")
    assert wrong.json()["code"] != 0


def test_stats_count_requests_per_route_and_key_and_filter_by_app_and_arrival_time() -> None:
    with serving("--app", "cli_a:sa", "--app", "cli_b:sb") as (_, url):
        for app_id, secret in [("cli_a", "sa"), ("cli_a", "sa"), ("cli_b", "sb")]:
            requests.post(url + TENANT_INTERNAL, json={"app_id": app_id, "app_secret": secret})
        every = requests.get(url + "/_fake/stats").json()
        only_b = requests.get(url + "/_fake/stats", params={"app_id": "cli_b"}).json()
        later = requests.get(url + "/_fake/stats", params={"since": every["now"]}).json()
    assert every["requests"] == 3
    assert every["by_route"] == {TENANT_INTERNAL: 3}
    assert sorted((k["app_id"], k["kind"], k["requests"]) for k in every["by_key"]) == [
        ("cli_a", "tenant", 2),
        ("cli_b", "tenant", 1),
    ]
    assert every["in_flight"] == 0 and every["max_in_flight_per_key"] >= 1
    assert only_b["requests"] == 1
    assert later["requests"] == 0


def test_a_marketplace_app_on_the_command_line_gets_a_ticket_from_the_tickets_route() -> None:
    with serving("--app", "cli_m:sm:marketplace") as (_, url):
        ticket = requests.post(url + "/_fake/tickets", json={"app_id": "cli_m"}).json()
        body = {"app_id": "cli_m", "app_secret": "sm", "app_ticket": ticket["app_ticket"]}
        app_token = requests.post(url + APP_STORE, json=body).json()
    assert app_token["code"] == 0 and app_token["app_access_token"]


def test_unknown_control_routes_and_bad_bodies_are_answered_with_errors() -> None:
    with serving() as (_, url):
        unknown = requests.post(url + "/_fake/nothing", json={})
        missing = requests.post(url + "/_fake/apps", json={"app_id": "cli_x"})
        not_marketplace = requests.post(url + "/_fake/tickets", json={"app_id": "cli_x"})
    assert unknown.status_code == 404 and "no control route" in unknown.json()["error"]
    assert missing.status_code == 400
    assert not_marketplace.status_code == 400


def test_serve_refuses_an_address_that_is_not_loopback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "actors.testing", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2 and "not a loopback" in done.stderr


def test_serve_says_so_and_exits_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "actors.testing", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(signum: signal.Signals) -> None:
    with serving() as (child, _):
        child.send_signal(signum)
        assert child.wait(TIMEOUT) == 0


def test_serve_stops_at_the_eof_of_its_stdin_pipe() -> None:
    with serving(stdin=subprocess.PIPE) as (child, url):
        assert requests.get(url + "/_fake/stats").ok
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(TIMEOUT) == 0


def test_the_process_wrapper_registers_apps_counts_requests_and_resets_them() -> None:
    with FakeFeishuProcess() as fake:
        ticket = fake.add_app("cli_m", "sm", marketplace=True)
        assert ticket is not None and fake.add_app("cli_s", "ss") is None
        app = actors.AppConfig("cli_s", "ss", base_url=fake.base_url)
        with actors.TokenSystem.start(app) as system:
            assert system.proxy.get_token().get(timeout=TIMEOUT).startswith("t-")
        assert fake.count(app_id="cli_s") == 1
        assert fake.count(app_id="cli_m") == 0
        fake.reset_stats()
        assert fake.count() == 0
        with pytest.raises(RuntimeError, match="not a registered marketplace app"):
            fake.issue_ticket("cli_s")


def _exited_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` (not a child of ours) exits within ``seconds``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(fd)


def test_a_server_started_by_a_killed_parent_exits_with_it() -> None:
    """No cleanup at all in the parent: the server sees the EOF of its stdin pipe."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from actors.testing import FakeFeishuProcess\n"
            "print(FakeFeishuProcess().start().pid, flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server = int(first_line(parent))
        assert not _exited_within(server, 0)
    finally:
        reap(parent)
    assert _exited_within(server, TIMEOUT)
