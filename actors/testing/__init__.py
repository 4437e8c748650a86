"""Test support: an embedded fake Feishu auth server on loopback, and a function-backed source.

:class:`FakeFeishu` speaks the auth v3 contract (self-built and marketplace endpoints, the
30-minute same-token rule, error codes) with expiry on an injectable clock; tests steer it with
scripted :class:`Reply` objects, :class:`Gate` holds, latency and failure knobs.
:class:`FunctionSource` skips HTTP altogether: a function answers each token request.

The faults a misbehaving upstream or gateway can produce, for a client's fault matrix
(``server.script(kind, reply, ...)``; details in :class:`Reply`):

- an error code, any HTTP status: ``Reply.code(10014, "...", status=400)``;
- rate limiting: ``Reply.rate_limited(reset=3)`` (JSON 99991400) or
  ``Reply.gateway_rate_limited(reset=3)`` (an HTML 429 page with ``x-ogw-ratelimit-reset``);
  ``reset=10_000_000_000`` for an absurd reset;
- a non-JSON gateway page: ``Reply.http(502)`` (any status, body and headers);
- an unusable lifetime: ``Reply.ok(token, expire)`` with ``1e10``, ``float("nan")``,
  ``float("inf")``, ``0`` or a negative number (non-finite ones written ``NaN`` / ``Infinity``,
  as Python's json writes and reads them), or ``Reply.raw('{..."expire":1e400}')`` for a body
  spelled exactly;
- broken answers: ``Reply.truncated()`` (cut JSON, complete framing),
  ``Reply.reset_mid_body()`` (headers and part of the body, then a TCP reset),
  ``Reply.disconnect()`` (closed without an answer);
- slow answers: ``Reply.drip(reply, interval=0.3)`` (the body one byte per interval;
  ``head=True`` drips the status line and headers too);
- a hang: ``gate = server.hold("tenant")`` blocks matching requests until ``gate.release()``
  or ``server.stop()``.

Drips and resets need the loopback socket; :meth:`FakeFeishu.adapter` (in-process) answers a
drip at once and raises ``requests.ConnectionError`` for a reset.

Business Open API routes, answered with Feishu's codes for a revoked, expired, unknown or
missing bearer token:

- ``GET /open-apis/im/v1/chats`` and ``POST /open-apis/im/v1/messages?receive_id_type=...``
  take a tenant token (99991663 when it is not one the server accepts),
  ``POST /open-apis/authen/v1/oidc/access_token`` an app token (99991664);
- recorded as kind ``"business"`` with the ``token`` each call carried, its ``headers`` and
  ``body``; scripted and held like token requests: ``server.script("business", Reply.http(502))``,
  ``Reply.code(99991672, "...", status=400)`` (a missing scope), ...;
- ``server.business.set_invalid_status(200)``: invalid-token answers with HTTP 200, not 400.

User access tokens (``server.oauth``, an ``OAuthApi``; ``docs/feishu-protocol.md``, "User access
tokens"):

- test users: ``server.oauth.add_user("ou_1", name=..., tenant_key=...)``, ``sign_in("ou_1")``
  (who consents on the authorize page), ``deny_next()``;
- ``GET /open-apis/authen/v1/authorize?client_id=...&redirect_uri=...&scope=...&state=...``
  (PKCE ``code_challenge`` with ``code_challenge_method=S256``) redirects (302) to
  ``redirect_uri?code=...&state=...``; ``server.oauth.issue_code(app_id, redirect_uri)`` skips
  the browser;
- ``POST /oauth/v3/token`` and ``POST /open-apis/authen/v2/oauth/token``: single-use codes,
  single-use rotating refresh tokens (a reuse answers 20064 and counts in
  ``server.oauth.refresh_reuses``; every answer in ``server.oauth.redemptions`` as a
  :class:`Redemption`), a refresh token only with the ``offline_access`` scope;
- lifetimes on the server's clock: ``server.oauth.set_lifetimes(access_token=...,
  refresh_token=..., code=..., grant=...)`` (past them: 20004, 20037, 99991677);
- ``server.oauth.configure(app_id, redirect_uris=..., offline_access=..., refresh_enabled=...)``,
  ``revoke(open_id)``, ``lose_answer()`` (the rotation happens, the answer never arrives),
  ``grant_alive(open_id)``;
- any code on demand: ``server.script("user", oauth_error(20050))`` (HTTP 500), ``20037``,
  ``20074``, ...; recorded, scripted and held as kinds ``"user"`` and ``"authorize"``;
- ``GET /open-apis/authen/v1/user_info`` and ``GET /open-apis/calendar/v4/calendars`` take a
  user token: 99991668 for one never issued or revoked, 99991677 for an expired one.

Keyless apps (client assertions; ``docs/feishu-protocol.md``, "Keyless apps"):

- ``server.add_app(app_id, public_key=key)`` (an RSA or EC P-256 public key, or its PEM)
  registers a keyless app; ``/oauth/v3/token`` then verifies its client assertions (signature,
  ``iss``/``sub``, ``aud`` = the server's ``host:port``, ``exp`` within the hour, ``iat``, a
  ``jti`` used once) and answers the jwt-bearer grant with a tenant token; a refused assertion
  is answered 20002 ``invalid_client``; ``server.oauth.assertions`` and
  ``refused_assertions`` count them. The requests are of kind ``"user"``;
- ``assertion_provider(private_key, app_id, clock=...)`` is the provider for
  ``AppConfig(app_id, client_assertion=...)``, signing fresh assertions with a key the test
  makes (``rsa.generate_private_key(...)`` from ``cryptography``); it records the
  ``audiences`` it was asked for.

Event push: ``server.push_events_to(url, verification_token=..., encrypt_key=...)`` POSTs an
encrypted, signed app_ticket event (:func:`encrypt_event`, :func:`sign_event`,
:func:`app_ticket_event`) to ``url`` after each ``app_ticket/resend``; the returned
:class:`EventPusher` records each :class:`Push`.
"""

from actors.testing._assertions import assertion_provider as assertion_provider
from actors.testing._events import EventPusher as EventPusher
from actors.testing._events import Push as Push
from actors.testing._events import app_ticket_event as app_ticket_event
from actors.testing._events import encrypt_event as encrypt_event
from actors.testing._events import sign_event as sign_event
from actors.testing._fake_feishu import FakeFeishu as FakeFeishu
from actors.testing._oauth import Redemption as Redemption
from actors.testing._oauth import oauth_error as oauth_error
from actors.testing._replies import Gate as Gate
from actors.testing._replies import RecordedRequest as RecordedRequest
from actors.testing._replies import Reply as Reply
from actors.testing._serve import FakeFeishuProcess as FakeFeishuProcess
from actors.testing._sources import FunctionSource as FunctionSource
from actors.testing._stores import store_available as store_available
from actors.testing._stores import wait_listening as wait_listening

__all__ = [
    "EventPusher",
    "FakeFeishu",
    "FakeFeishuProcess",
    "FunctionSource",
    "Gate",
    "Push",
    "RecordedRequest",
    "Redemption",
    "Reply",
    "app_ticket_event",
    "assertion_provider",
    "encrypt_event",
    "oauth_error",
    "sign_event",
    "store_available",
    "wait_listening",
]
