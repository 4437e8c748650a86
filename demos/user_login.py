"""Log in with Feishu: a web app that acts as the user, and is still logged in after a restart.

A small web app (the standard library's ``http.server``) sends the browser to Feishu's
authorize page with a random ``state`` and a PKCE challenge, checks the ``state`` on the
callback, redeems the code (``system.proxy.redeem_code``) and lists the user's calendars with
the user's own token (``actors.FeishuAuth(system, TokenKind.USER, user=open_id)``). Grants live
in an ``actors.SqliteStore``, sealed with a Fernet key made for this run. Then the app stops and
starts again on the same store file: the user is still logged in, with no new login and no new
code exchange. The embedded fake Feishu server plays Feishu on loopback (a test user who
consents at once), so no credentials are needed.

By default the demo plays the browser itself (``requests``, following each redirect by hand)
and exits; ``--browser`` opens your browser instead and waits for it.

    python demos/user_login.py [--browser]

Public API only: ``actors`` and ``actors.testing``. No token is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import itertools
import secrets
import sys
import tempfile
import threading
import webbrowser
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import requests
from cryptography.fernet import Fernet

import actors
from actors.testing import FakeFeishu
from demos._serving import QuietHandler, serving

APP_ID, SECRET = "cli_login_demo", "login-demo-secret"
USER, USER_NAME = "ou_alice", "Alice"
SCOPE = ("calendar:calendar:readonly",)  # offline_access is added by authorize_url
CALENDARS = "/open-apis/calendar/v4/calendars"
HIDDEN = frozenset({"code", "state", "code_challenge"})  # never printed: "…" instead
BROWSER_WAIT = 300.0  # seconds --browser waits for you at each step
STEPS = itertools.count(1)  # the story's numbering (--browser has fewer steps)


@dataclass
class Site:
    """What the web app keeps: its TokenSystem, the logins in progress, its cookie key."""

    system: actors.TokenSystem
    feishu_url: str  # where the app calls Feishu's APIs
    cookie_key: bytes  # signs the session cookie; a real app reads it from its config
    logins: dict[str, str] = field(default_factory=dict)  # state -> PKCE verifier
    lock: threading.Lock = field(default_factory=threading.Lock)
    api: requests.Session = field(default_factory=requests.Session)
    page: str = ""  # the last calendar page served, for the story
    page_served: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.api.trust_env = False  # loopback: no proxy from the environment

    def close(self) -> None:
        self.system.stop()
        self.api.close()

    def session_cookie(self, open_id: str) -> str:
        return f"{open_id}.{self._sign(open_id)}"

    def user_of(self, cookie: str | None) -> str | None:
        """The open_id of a session cookie this app signed, else None."""
        open_id, _, signature = (cookie or "").rpartition(".")
        if open_id and hmac.compare_digest(signature.encode(), self._sign(open_id).encode()):
            return open_id
        return None

    def _sign(self, value: str) -> str:
        return hmac.new(self.cookie_key, value.encode(), hashlib.sha256).hexdigest()


class LoginHandler(QuietHandler):
    """``/login``, ``/callback`` and ``/calendars`` of the web app."""

    server: WebServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = {"/login": self.login, "/callback": self.callback, "/calendars": self.calendars}
        handler = route.get(parts.path)
        if handler is None:
            self.answer(404, "not found")
        else:
            handler(query)

    def login(self, query: dict[str, str]) -> None:
        site = self.server.site
        state = secrets.token_urlsafe(24)  # binds the callback to this browser (CSRF)
        verifier, challenge = actors.pkce_pair()  # binds the code to this app (interception)
        with site.lock:
            site.logins[state] = verifier
        url = site.system.authorize_url(
            self.server.redirect_uri, state=state, scope=SCOPE, code_challenge=challenge
        )
        tell("a login starts: a new state and PKCE pair; off to Feishu's authorize page")
        cookie = f"login_state={state}; Path=/callback; HttpOnly; SameSite=Lax"
        self.answer(302, "", location=url, cookies=(cookie,))

    def callback(self, query: dict[str, str]) -> None:
        site = self.server.site
        state, expected = query.get("state", ""), self.cookie("login_state") or ""
        ours = bool(state) and hmac.compare_digest(state.encode(), expected.encode())
        with site.lock:  # a state is used once: a replayed callback finds nothing
            verifier = site.logins.pop(state, None) if ours else None
        if verifier is None:
            tell("callback refused: its state is not the one this browser was given")
            self.answer(400, "this login was not started here")
            return
        if "code" not in query:
            tell(f"the user did not consent ({query.get('error', 'no code')})")
            self.answer(403, "login declined")
            return
        try:
            grant = site.system.proxy.redeem_code(
                query["code"], redirect_uri=self.server.redirect_uri, code_verifier=verifier
            ).get(timeout=30)
        except actors.AuthorizationCodeError as exc:
            tell(f"the code was refused ({exc})")
            self.answer(400, "login failed")
            return
        now = site.system.clock.now()
        refresh = grant.refresh_expires_at
        tell(
            f"state checked; code redeemed for {grant.open_id}: scope {' '.join(grant.scope)}; "
            f"access token for {(grant.expires_at - now) / 60:.0f} min, "
            + (f"refresh token for {(refresh - now) / 86400:.0f} d" if refresh else "no refresh")
        )
        session = f"session={site.session_cookie(grant.open_id)}; Path=/; HttpOnly; SameSite=Lax"
        done = "login_state=; Path=/callback; Max-Age=0"
        self.answer(302, "", location="/calendars", cookies=(session, done))

    def calendars(self, query: dict[str, str]) -> None:
        site = self.server.site
        open_id = site.user_of(self.cookie("session"))
        if open_id is None:
            self.answer(302, "", location="/login")
            return
        # The user's own token; a 99991668/99991677 answer rotates it once and retries once.
        auth = actors.FeishuAuth(site.system, actors.TokenKind.USER, user=open_id)
        try:
            answer = site.api.get(site.feishu_url + CALENDARS, auth=auth, timeout=10).json()
        except actors.ReauthorizationRequired as exc:  # the grant ended: log in again
            tell(f"{open_id} must log in again ({exc.reason})")
            self.answer(302, "", location="/login")
            return
        tell(f"GET {CALENDARS} as {open_id} -> code {answer['code']}")
        if answer["code"] != 0:  # e.g. 99991672: the app lacks the scope
            self.answer(502, f"Feishu answered code {answer['code']}")
            return
        listed = [f"{c['summary']} ({c['type']})" for c in answer["data"]["calendar_list"]]
        site.page = f"Calendars of {open_id}: {', '.join(listed)}"
        self.answer(200, site.page)
        site.page_served.set()

    def cookie(self, name: str) -> str | None:
        morsel = SimpleCookie(self.headers.get("Cookie", "")).get(name)
        return morsel.value if morsel is not None else None

    def answer(
        self, status: int, text: str, *, location: str | None = None, cookies: tuple[str, ...] = ()
    ) -> None:
        headers = [("Cache-Control", "no-store")]
        if location is not None:
            headers.append(("Location", location))
        headers += [("Set-Cookie", cookie) for cookie in cookies]
        self.send_body(status, text.encode(), "text/plain; charset=utf-8", *headers)


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Site, port: int) -> None:
        super().__init__(("127.0.0.1", port), LoginHandler)
        self.site = site
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.redirect_uri = f"{self.url}/callback"  # registered in the app's console


@contextlib.contextmanager
def web_app(site: Site, *, port: int = 0) -> Iterator[WebServer]:
    """The web app on loopback (``port`` 0: a free one), until the block ends."""
    with serving(WebServer(site, port), name="web-app") as server:
        yield server


def tell(line: str) -> None:
    print(f"   app: {line}", flush=True)


def step(line: str) -> None:
    print(f"{next(STEPS)}. {line}", flush=True)


class Browser:
    """The user's browser, played with ``requests``: one hop at a time, each one told."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # origin -> what to call it
        self.session = requests.Session()
        self.session.trust_env = False

    def get(self, url: str) -> requests.Response:
        answer = self.session.get(url, allow_redirects=False, timeout=30)
        print(f"   browser: GET {self.shown(url)} -> {answer.status_code}", flush=True)
        return answer

    def follow(self, url: str) -> requests.Response:
        """GET ``url`` and every redirect after it; the last answer."""
        answer = self.get(url)
        while answer.is_redirect:
            url = urljoin(url, answer.headers["Location"])
            answer = self.get(url)
        return answer

    def shown(self, url: str) -> str:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pairs = [f"{k}={'…' if k in HIDDEN else v[0]}" for k, v in parse_qs(parts.query).items()]
        query = "&".join(pairs)
        return f"{self.names.get(origin, origin)} {parts.path}" + (f"?{query}" if query else "")


def visit(browser: Browser | None, url: str, site: Site) -> None:
    """The user opens ``url``, in the played browser or in their own (``--browser``): until
    the app has served a calendar page."""
    site.page_served.clear()
    if browser is not None:
        browser.follow(url)
    else:
        print(f"   your browser opens {url}; waiting for it (at most {BROWSER_WAIT:.0f} s)")
        if not webbrowser.open(url):
            sys.exit(f"no browser could be opened: open {url} yourself, or run without --browser")
    if not site.page_served.wait(BROWSER_WAIT):
        sys.exit("no calendar page was served")
    print(f"   page: {site.page}")


def log_in(browser: Browser | None, app: WebServer, server: FakeFeishu) -> None:
    """The login; the played browser also shows a forged callback being refused."""
    if browser is None:
        visit(None, f"{app.url}/login", app.site)
        return
    authorize = browser.get(f"{app.url}/login").headers["Location"]
    callback = browser.get(authorize).headers["Location"]
    print(f"   (Feishu: {USER} is signed in and consents at once)")

    step("Before the callback, a link with someone else's code arrives (login CSRF)")
    code = server.oauth.issue_code(APP_ID, app.redirect_uri, user="ou_mallory")
    forged = f"{app.redirect_uri}?code={code}&state={secrets.token_urlsafe(24)}"
    browser.get(forged)
    print(f"   Feishu saw {server.count('user')} code exchanges: the forged code was never sent")

    step("The real callback: the app redeems the code and calls an API as the user")
    visit(browser, callback, app.site)


def start(app: actors.AppConfig, path: Path, key: bytes) -> actors.TokenSystem:
    return actors.TokenSystem.start(app, store=actors.SqliteStore(path, key=key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", action="store_true", help="use your own browser")
    args = parser.parse_args()
    key, cookie_key = Fernet.generate_key(), secrets.token_bytes(32)
    with FakeFeishu() as server, tempfile.TemporaryDirectory() as folder:
        server.add_app(APP_ID, SECRET)
        server.oauth.add_user(USER, name=USER_NAME)  # the first user added is the signed-in one
        server.oauth.add_user("ou_mallory", name="Mallory")
        app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
        path = Path(folder) / "tokens.sqlite3"
        print(f"Fake Feishu at {server.base_url}: app {APP_ID}, test user {USER} ({USER_NAME})")
        print(f"Grants in {path.name}, an SqliteStore sealed with a Fernet key made for this run")

        site = Site(start(app, path, key), server.base_url, cookie_key)
        with web_app(site) as web:
            browser = None if args.browser else Browser({web.url: "app", server.base_url: "feishu"})
            step(f"The user opens the app at {web.url} and logs in with Feishu")
            log_in(browser, web, server)
        site.close()
        port = web.server_address[1]
        before = (server.count("authorize"), server.count("user"))

        step("The app restarts: a new TokenSystem on the same store file and key")
        site = Site(start(app, path, key), server.base_url, cookie_key)
        try:
            [grant] = site.system.users()
            days = (grant.reauthorize_by - site.system.clock.now()) / 86400
            print(
                f"   the store holds {grant.open_id}'s grant (Feishu's limit: {days:.0f} more days)"
            )
            with web_app(site, port=port) as web:
                visit(browser, f"{web.url}/calendars", site)
        finally:
            site.close()
        after = (server.count("authorize"), server.count("user"))
        step(
            f"Since the restart Feishu saw {after[0] - before[0]} authorize visits and "
            f"{after[1] - before[1]} token requests: {USER} is still logged in"
        )


if __name__ == "__main__":
    main()
