"""Demos are code: each runs to completion (smoke test)."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

import actors
from actors.testing import FunctionSource, encrypt_event
from demos import event_server

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


def test_user_login_demo_logs_in_and_is_still_logged_in_after_a_restart() -> None:
    result = run_demo("user_login.py")
    assert result.returncode == 0, result.stderr
    assert "browser: GET app /callback?code=…&state=… -> 400" in result.stdout
    assert "Feishu saw 0 code exchanges: the forged code was never sent" in result.stdout
    assert result.stdout.count("page: Calendars of ou_alice: Alice (primary)") == 2
    assert "Feishu saw 0 authorize visits and 0 token requests" in result.stdout
    # Tokens, codes and refresh tokens are 32 hex digits on the fake: none is printed.
    assert re.search("[0-9a-f]{16}", result.stdout) is None
    assert "Traceback" not in result.stderr


def test_jssdk_page_demo_signs_h5sdk_config_with_one_ticket_for_many_page_loads() -> None:
    result = run_demo("jssdk_page.py")
    assert result.returncode == 0, result.stderr
    assert "calls window.h5sdk.config: True" in result.stdout
    assert "24 configs served, Feishu saw 1 ticket request" in result.stdout
    assert "(no ticket among them)" in result.stdout
    assert "matches 24 of 24" in result.stdout
    assert "its fragment is not signed; Feishu's check holds: True" in result.stdout
    assert "another site's page -> 400" in result.stdout
    assert "24 more page loads: 0 more ticket requests" in result.stdout
    # Tickets and signatures are long hex strings: neither is printed.
    assert re.search("[0-9a-f]{16}", result.stdout) is None
    assert "Traceback" not in result.stderr


@pytest.fixture
def event_url() -> Iterator[str]:
    """The demo's event endpoint on loopback, for a system of the demo's app."""
    app = actors.AppConfig(event_server.APP_ID, "secret", app_type=actors.AppType.MARKETPLACE)
    with (
        actors.TokenSystem.start(app, source=FunctionSource.constant()) as system,
        event_server.event_endpoint(system) as url,
    ):
        yield url


def post_head(url: str, head: str) -> http.client.HTTPResponse:
    """Send a POST's request line and ``head`` (headers) and no body; its answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()  # the response reads on through its own file once the socket is closed
    return response


def test_event_server_demo_refuses_a_body_over_its_cap_from_the_header_alone(
    event_url: str,
) -> None:
    # 150 MiB declared and not one byte sent: an answer proves the endpoint read none of it.
    response = post_head(event_url, f"Content-Length: {150 << 20}\r\n")

    assert response.status == 413
    assert response.getheader("Connection") == "close"
    assert response.read() == b'{"error": "body too large"}'


@pytest.mark.parametrize(
    "head",
    ["", "Transfer-Encoding: chunked\r\n", "Content-Length: -1\r\n", "Content-Length: 1e9\r\n"],
    ids=["no-length", "chunked", "negative", "not-decimal"],
)
def test_event_server_demo_answers_411_when_nothing_bounds_the_body(
    event_url: str, head: str
) -> None:
    assert post_head(event_url, head).status == 411


def test_event_server_demo_still_serves_after_refusing_a_body(event_url: str) -> None:
    post_head(event_url, f"Content-Length: {150 << 20}\r\n")
    check = {"type": "url_verification", "challenge": "ch-1"}
    body = encrypt_event(
        {**check, "token": event_server.VERIFICATION_TOKEN}, event_server.ENCRYPT_KEY
    )
    with requests.Session() as session:
        session.trust_env = False  # loopback: no proxy from the environment
        response = session.post(event_url, data=body, timeout=10)

    assert response.status_code == 200 and response.json() == {"challenge": "ch-1"}
