"""The official Feishu/Lark SDK (lark-oapi) with tokens from a TokenSystem.

Runs against the embedded fake Feishu server on loopback (no credentials needed): lists chats and
sends a message through ``lark_oapi`` in manual-token mode, then the server revokes the app's
tokens, as Feishu does when a secret is reset, and the next call recovers by itself: the stale
token is invalidated, a fresh one fetched, and the call sent once more. Last, a hand-built
request naming another host is handed no token, so the SDK refuses to send it.

    pip install "lark-token-actors[lark]"
    python demos/lark_sdk.py

Public API only: ``actors``, ``actors.lark`` and ``actors.testing``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

import lark_oapi
from lark_oapi.api.im.v1 import (
    CreateMessageRequest,
    CreateMessageRequestBody,
    ListChatRequest,
)
from lark_oapi.core.exception import NoAuthorizationException

import actors
from actors.lark import acall, call, lark_client
from actors.testing import FakeFeishu

APP_ID, SECRET = "cli_sdk_demo", "sdk-demo-secret"


def short(token: str | None) -> str:
    return f"{token[:6]}…" if token else "-"


def tokens_sent(server: FakeFeishu, since: int) -> list[str]:
    """The bearer tokens of the business calls the server saw from request ``since`` on."""
    return [short(r.token) for r in server.requests[since:] if r.kind == "business"]


def main() -> None:
    with FakeFeishu() as server:
        server.add_app(APP_ID, SECRET)
        app = actors.AppConfig(APP_ID, SECRET, base_url=server.base_url)
        with actors.TokenSystem.start(app) as system:
            client = lark_client(system)  # manual-token mode: the SDK never fetches a token
            chats = ListChatRequest.builder().page_size(20).build()

            # 1. A call with the system's tenant token.
            response = call(system, client.im.v1.chat.list, chats)
            names = [chat.name for chat in response.data.items]
            print(f"1. im.v1.chat.list -> code {response.code}, chats {names}")

            # 2. Feishu revokes the token (a secret reset, say): the call recovers once.
            seen = len(server.requests)
            server.rotate()
            response = call(system, client.im.v1.chat.list, chats)
            sent = tokens_sent(server, seen)
            print(
                f"2. after the token was revoked: code {response.code}; the server saw "
                f"{len(sent)} calls, tokens {' then '.join(sent)} (99991663, invalidate, retry)"
            )

            # 3. A POST with a body, the same way.
            body = (
                CreateMessageRequestBody.builder()
                .receive_id("oc_demo_chat")
                .msg_type("text")
                .content(json.dumps({"text": "hello from lark-token-actors"}))
                .build()
            )
            message = (
                CreateMessageRequest.builder().receive_id_type("chat_id").request_body(body).build()
            )
            created = call(system, client.im.v1.message.create, message)
            print(f"3. im.v1.message.create -> code {created.code}, {created.data.message_id}")

            # 4. The SDK's async methods, with acall.
            server.rotate()
            answer = asyncio.run(acall(system, client.im.v1.chat.alist, chats))
            print(f"4. im.v1.chat.alist after another revocation -> code {answer.code}")

            # 5. The token goes to the app's domain only: a request naming another host gets none.
            elsewhere = (
                lark_oapi.BaseRequest.builder()
                .http_method(lark_oapi.HttpMethod.GET)
                .uri("https://elsewhere.example/open-apis/im/v1/chats")
                .token_types({lark_oapi.AccessTokenType.TENANT})
                .build()
            )
            try:
                call(system, client.request, elsewhere)
            except NoAuthorizationException:
                print("5. a request to https://elsewhere.example -> handed no token, not sent")

            metrics = system.metrics()
            token_requests = server.count("tenant")
            print(
                f"\n{len(tokens_sent(server, 0))} business calls, {token_requests} token "
                f"requests, {metrics.invalidations} invalidations, no token fetched by the SDK"
            )


if __name__ == "__main__":
    main()
