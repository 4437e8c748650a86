"""A marketplace app's event endpoint: the app_ticket arrives as an encrypted, signed event.

A marketplace (store) app needs the app_ticket Feishu pushes to its event URL before it can get
any token. This demo runs a minimal event endpoint (the standard library's ``http.server``)
that hands every callback to ``actors.handle_event``, which checks the signature and the
verification token, decrypts the event and feeds the ticket to the TokenSystem. The endpoint
refuses a body over its cap from the ``Content-Length`` alone, before reading a byte of it
(HTTP 413), and a client that sends too slowly is cut off. The embedded
fake Feishu server plays Feishu: asked to resend the ticket, it pushes the event to the
endpoint over HTTP. Then a tenant token is obtained, and the demo exits.

    python demos/event_server.py

Public API only: ``actors`` and ``actors.testing``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from email.message import Message
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import requests

import actors
from actors.testing import FakeFeishu, encrypt_event
from demos._serving import QuietHandler, serving

APP_ID, SECRET = "cli_store_demo", "store-demo-secret"
# The app's event settings (Developer Console -> Events & Callbacks -> Encryption Strategy).
ENCRYPT_KEY = "demo-encrypt-key"
VERIFICATION_TOKEN = "demo-verification-token"
MAX_BODY = 1 << 20  # a callback is a few hundred bytes: a bigger one is not read at all


class EventHandler(QuietHandler):
    """POST /feishu/events: every callback goes through ``actors.handle_event``."""

    system: ClassVar[actors.TokenSystem]
    timeout = 10  # seconds a client may take per read: a slow sender does not hold a thread

    def do_POST(self) -> None:
        length = _content_length(self.headers)
        if length is None:  # no length, or chunked: nothing bounds the body before reading it
            self._answer(411, {"error": "Content-Length required"}, close=True)
            return
        if length > MAX_BODY:  # refused unread: the connection closes with the body unsent
            print(f"   endpoint: refused a {length}-byte body unread (cap {MAX_BODY})")
            self._answer(413, {"error": "body too large"}, close=True)
            return
        raw = self.rfile.read(length)
        try:
            answer = actors.handle_event(
                self.system,
                raw,
                headers=self.headers,
                verification_token=VERIFICATION_TOKEN,
                encrypt_key=ENCRYPT_KEY,
                app_id=APP_ID,
                max_body=MAX_BODY,
            )
        except actors.EventError as exc:  # forged, tampered, replayed or misconfigured
            print(f"   endpoint: refused an event ({exc})")
            self._answer(400, {"error": "bad event"})
            return
        if "challenge" in answer:  # the URL check is encrypted but not signed
            print(f"   endpoint: url_verification decrypted, token checked ({len(raw)} bytes)")
        else:
            print(f"   endpoint: event decrypted, signature and token checked ({len(raw)} bytes)")
        self._answer(200, answer)

    def _answer(self, status: int, answer: dict[str, object], *, close: bool = False) -> None:
        # A body left unread cannot be skipped: with close, this connection ends here.
        headers = [("Connection", "close")] if close else []
        self.send_body(status, json.dumps(answer).encode(), "application/json", *headers)


def _content_length(headers: Message) -> int | None:
    """The declared body length; None if absent, not a plain decimal number, or chunked."""
    value = headers.get("Content-Length")
    if headers.get("Transfer-Encoding") or value is None:
        return None
    return int(value) if value.isascii() and value.isdigit() else None


@contextlib.contextmanager
def event_endpoint(system: actors.TokenSystem) -> Iterator[str]:
    """Serve :class:`EventHandler` on a free loopback port; yields the event URL."""
    EventHandler.system = system
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), EventHandler)
    with serving(endpoint, name="event-endpoint"):
        yield f"http://127.0.0.1:{endpoint.server_address[1]}/feishu/events"


def main() -> None:
    with FakeFeishu() as feishu:
        feishu.add_app(APP_ID, SECRET, marketplace=True)
        app = actors.AppConfig(
            APP_ID, SECRET, app_type=actors.AppType.MARKETPLACE, base_url=feishu.base_url
        )
        with actors.TokenSystem.start(app) as system, event_endpoint(system) as url:
            # Saving the URL in the console makes Feishu check it with a challenge first.
            print(f"1. Feishu checks the event URL {url}")
            check = {"type": "url_verification", "challenge": "ch-42", "token": VERIFICATION_TOKEN}
            answer = requests.post(url, data=encrypt_event(check, ENCRYPT_KEY), timeout=10)
            print(f"   -> {answer.json()}")

            # From now on Feishu pushes app_tickets there, encrypted and signed.
            pusher = feishu.push_events_to(
                url, verification_token=VERIFICATION_TOKEN, encrypt_key=ENCRYPT_KEY
            )
            print("2. get a tenant token: no app_ticket yet, so the system asks for a resend")
            token = system.proxy.get_token(tenant_key="tenant-demo").get(timeout=30)
            # The ticket was fed before the endpoint answered: wait for its answer too.
            pusher.wait_for_pushes(1, timeout=10)
            [push] = pusher.pushes
            print(f"   Feishu pushed the app_ticket: the endpoint answered HTTP {push.status}")
            valid = feishu.valid_token(token)
            print(f"3. tenant token for tenant-demo: {token[:6]}… (accepted by Feishu: {valid})")
            print(
                f"\n{system.metrics().ticket_resends} resend, {feishu.count('app')} app token and "
                f"{feishu.count('tenant')} tenant token request(s)"
            )


if __name__ == "__main__":
    main()
