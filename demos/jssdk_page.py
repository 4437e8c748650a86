"""A web page that uses Feishu's JSSDK: the server signs ``h5sdk.config`` with a cached ticket.

A small web app (the standard library's ``http.server``) serves a page and a JSON endpoint,
``/jsapi-config?url=<the page's URL>``, that answers ``system.jsapi_config(url)``: the
``appId``, ``timestamp``, ``nonceStr`` and ``signature`` the page hands to ``h5sdk.config``. The
signature is made from the tenant's jsapi_ticket, which the TokenSystem caches, single-flights
and prewarms like a token, so page loads cost no ticket request (the endpoint's quota is
"very limited"). The ticket never leaves the server. The embedded fake Feishu server plays
Feishu on loopback, so no credentials are needed.

By default the demo plays the browser itself (``requests``): it loads the page, asks for its
config as the page's script does, checks the signature the way Feishu does (the SHA-1 of
``jsapi_ticket=…&noncestr=…&timestamp=…&url=…``, computed here independently), loads the page
many times at once, and exits. ``--serve`` keeps the app running for your browser until Ctrl-C;
the page cannot load Feishu's real JSSDK offline, so it carries a stand-in that shows the config.

    python demos/jssdk_page.py [--serve]

Public API only: ``actors`` and ``actors.testing``. No ticket is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import requests

import actors
from actors.testing import FakeFeishu
from demos._serving import QuietHandler, serving

APP_ID, SECRET = "cli_jssdk_demo", "jssdk-demo-secret"
TICKET_PATH = "/open-apis/jssdk/ticket/get"  # Feishu's, to count the requests the fake saw
PAGE_LOADS = 24  # concurrent page loads of the story's last step

# The page. In production its first <script> is Feishu's JSSDK (the h5-js-sdk file Feishu's
# JSSDK documentation names), which defines window.h5sdk and checks the signature with Feishu.
# Offline there is no such script, so a stand-in records the config and shows it instead.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>JSSDK demo</title>
  <script>
    // Stand-in for Feishu's JSSDK, for this offline demo only.
    window.h5sdk = {
      configs: [],
      config(c) {
        this.configs.push(c);
        document.getElementById("config").textContent = JSON.stringify(c, null, 2);
        console.log("h5sdk.config", c);
        c.onSuccess && c.onSuccess({});
      },
      ready(callback) { callback(); },
      error(callback) {},
    };
  </script>
</head>
<body>
  <h1>JSSDK demo</h1>
  <pre id="config">asking the server for h5sdk.config's arguments…</pre>
  <script>
    // The URL the JSSDK checks the signature against: this page's, without its #fragment.
    const url = location.href.split("#")[0];
    fetch("/jsapi-config?url=" + encodeURIComponent(url))
      .then((answer) => answer.json())
      .then((config) => window.h5sdk.config({
        ...config,  // appId, timestamp (ms), nonceStr, signature
        jsApiList: [],
        onSuccess: () => console.log("config accepted"),
        onFail: (error) => console.error("config refused", error),
      }));
  </script>
</body>
</html>
"""


class PageHandler(QuietHandler):
    """``/`` (the page) and ``/jsapi-config?url=`` (its config, as JSON)."""

    server: WebServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/":
            self.answer(200, PAGE.encode(), "text/html; charset=utf-8")
        elif parts.path == "/jsapi-config":
            self.config(parse_qs(parts.query).get("url", [""])[0])
        else:
            self.answer_json(404, {"error": "not found"})

    def config(self, url: str) -> None:
        # Sign this site's own pages only: a signature for anyone's URL is nobody's business.
        if urlsplit(url)._replace(path="", query="", fragment="").geturl() != self.server.url:
            self.answer_json(400, {"error": "url must be a page of this site"})
            return
        try:
            config = self.server.system.jsapi_config(url)
        except ValueError as exc:  # a URL the JSSDK cannot sign
            self.answer_json(400, {"error": str(exc)})
        except actors.TokenError as exc:  # no ticket now (Feishu down, credentials refused)
            self.answer_json(502, {"error": type(exc).__name__})
        else:
            self.answer_json(200, config)

    def answer_json(self, status: int, body: object) -> None:
        self.answer(status, json.dumps(body).encode(), "application/json")

    def answer(self, status: int, data: bytes, content_type: str) -> None:
        # A config is signed for one moment: no cache may keep it.
        self.send_body(status, data, content_type, ("Cache-Control", "no-store"))


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, system: actors.TokenSystem, port: int) -> None:
        super().__init__(("127.0.0.1", port), PageHandler)
        self.system = system
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def web_app(system: actors.TokenSystem, *, port: int = 0) -> Iterator[WebServer]:
    """The web app on loopback (``port`` 0: a free one), until the block ends."""
    with serving(WebServer(system, port), name="web-app") as server:
        yield server


def feishu_accepts(config: dict[str, object], ticket: str, url: str) -> bool:
    """What Feishu's JSSDK checks, written out from the documented rule (not the library's
    code): the SHA-1 hex of the four fields, the URL without its fragment."""
    page = url.split("#", 1)[0]
    text = (
        f"jsapi_ticket={ticket}&noncestr={config['nonceStr']}"
        f"&timestamp={config['timestamp']}&url={page}"
    )
    return hashlib.sha1(text.encode()).hexdigest() == config["signature"]


def ticket_requests(server: FakeFeishu) -> int:
    return sum(1 for r in server.requests if r.path == TICKET_PATH)


def ask_config(web: WebServer, url: str) -> requests.Response:
    """What the page's script does: GET /jsapi-config?url=<url>, from a browser of its own."""
    with requests.Session() as browser:
        browser.trust_env = False  # loopback: no proxy from the environment
        return browser.get(f"{web.url}/jsapi-config", params={"url": url}, timeout=10)


def story(server: FakeFeishu, system: actors.TokenSystem, web: WebServer) -> None:
    page_url = f"{web.url}/?tab=home"
    urls = [f"{page_url}&visitor={i}" for i in range(PAGE_LOADS)]

    with requests.Session() as browser:
        browser.trust_env = False
        page = browser.get(page_url, timeout=10)
    print(f"1. browser: GET /?tab=home -> {page.status_code}, {len(page.content)} bytes")
    print(
        f"   its script asks /jsapi-config for its URL and calls window.h5sdk.config: "
        f"{'window.h5sdk.config(' in page.text}"
    )

    with ThreadPoolExecutor(max_workers=8) as pool:
        configs = [answer.json() for answer in pool.map(lambda url: ask_config(web, url), urls)]
    print(f"2. {PAGE_LOADS} browsers open the page at once, before any ticket was fetched:")
    print(f"   {len(configs)} configs served, Feishu saw {ticket_requests(server)} ticket request")

    config = configs[0]
    age = time.time() - config["timestamp"] / 1000
    print(f"3. a config: {', '.join(sorted(config))} (no ticket among them)")
    print(f"   appId {config['appId']}, timestamp in milliseconds ({age:.1f} s old)")

    # Feishu's side: the ticket it issued to this tenant (the fake knows it; a browser never).
    ticket = system.proxy.get_token(actors.TokenKind.JSAPI_TICKET).get(timeout=10)
    accepted = sum(feishu_accepts(c, ticket, url) for c, url in zip(configs, urls, strict=True))
    if server.expires_at(ticket) is None:  # not a ticket this Feishu issued
        sys.exit("the system's ticket is not one Feishu issued")
    print("4. Feishu checks each signature with the ticket it issued to the tenant:")
    print(
        f"   sha1(jsapi_ticket=…&noncestr=…&timestamp=…&url=…) matches {accepted} of {PAGE_LOADS}"
    )

    tabbed = ask_config(web, page_url + "#/settings").json()
    holds = feishu_accepts(tabbed, ticket, page_url)
    print(f"5. the page at #/settings: its fragment is not signed; Feishu's check holds: {holds}")

    other = ask_config(web, "https://elsewhere.example/page")
    print(f"6. a config for another site's page -> {other.status_code} (this site signs its own)")

    before = ticket_requests(server)
    for url in urls:
        ask_config(web, url)
    print(
        f"7. {PAGE_LOADS} more page loads: {ticket_requests(server) - before} more ticket "
        f"requests; the ticket is cached, and prewarmed before it expires"
    )
    if accepted != PAGE_LOADS or not holds or other.status_code != 400:
        sys.exit("a check failed: see above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve for your browser")
    args = parser.parse_args()
    with FakeFeishu() as server:
        server.add_app(APP_ID, SECRET)
        app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
        with actors.TokenSystem.start(app) as system, web_app(system) as web:
            print(f"Fake Feishu at {server.base_url}: app {APP_ID}; the web app at {web.url}")
            if not args.serve:
                story(server, system, web)
                return
            print(f"Open {web.url}/ in your browser; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()


if __name__ == "__main__":
    main()
