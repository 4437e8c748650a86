"""How the fake Feishu's token endpoints authenticate the client (the app) of a request: its
``client_secret``, or a client assertion (RFC 7523) verified by ``_assertions`` against the
public key registered with ``add_app``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from actors._clock import Clock
from actors.testing._assertions import CLIENT_ASSERTION_TYPE, AssertionVerifier
from actors.testing._ledger import Ledger
from actors.testing._protocol import OAUTH_V3_PATH, UserCode
from actors.testing._users import Outcome

__all__ = ["ClientAuth"]


class ClientAuth:
    """The client check of one fake server's token endpoints (under the server's lock);
    ``audience()`` is the ``host:port`` the server stands for."""

    def __init__(self, ledger: Ledger, clock: Clock, *, audience: Callable[[], str]) -> None:
        self._ledger = ledger
        self._assertions = AssertionVerifier(clock)
        self._audience = audience

    @property
    def accepted(self) -> int:
        return self._assertions.accepted

    @property
    def refused(self) -> int:
        return self._assertions.refused

    def refusal(self, path: str, client_id: str, body: Mapping[str, object]) -> Outcome | None:
        """Why the client of the token request with ``body`` is refused, if it is."""
        secret = body.get("client_secret")
        assertion_type, assertion = body.get("client_assertion_type"), body.get("client_assertion")
        if assertion_type is None and assertion is None:
            app = self._ledger.apps.get(client_id)
            if app is None or secret != app.secret:  # both endpoints take a client_secret
                return Outcome(UserCode.BAD_CLIENT)
            return None
        if secret is not None:
            text = "Send a client_secret or a client assertion, not both."
            return Outcome(UserCode.BAD_REQUEST, detail=text)
        if (
            assertion_type != CLIENT_ASSERTION_TYPE
            or not isinstance(assertion, str)
            or not assertion
        ):
            text = f"A client assertion needs client_assertion_type={CLIENT_ASSERTION_TYPE}."
            return Outcome(UserCode.BAD_REQUEST, detail=text)
        app = self._ledger.apps.get(client_id)
        if app is None or app.public_key is None:
            text = "The client has no public key registered for client assertions."
            return Outcome(UserCode.BAD_CLIENT, detail=text)
        if path != OAUTH_V3_PATH:  # the fake's choice: the SDKs send assertions to v3 only
            text = f"Client assertions are accepted on {OAUTH_V3_PATH} only."
            return Outcome(UserCode.BAD_CLIENT, detail=text)
        reason = self._assertions.verify(
            assertion, key=app.public_key, client_id=client_id, audience=self._audience()
        )
        return None if reason is None else Outcome(UserCode.BAD_CLIENT, detail=reason)
