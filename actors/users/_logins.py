"""The user-login half of the token API (``system.proxy``): redeem a login's code, log a user
out. :class:`~actors._proxy.TokenProxy` inherits it; the methods speak to the TokenActor
through the proxy's one way of asking (``_ask`` for futures, ``_aask`` for coroutines)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pykka

from actors import _messages as m
from actors._config import AppConfig, TokenKind, resolve_app, resolve_key
from actors._messages import failed_future as _failed
from actors.users._grant import UserGrant, authorize_url

if TYPE_CHECKING:
    from actors.users._rotation import UserSource

__all__ = ["SystemLogins", "UserLogins"]


class UserLogins:
    """Logins and logouts; the token API's other half is the proxy's own."""

    _apps: dict[str, AppConfig]

    def _ask(self, message: Callable[[Any], Any]) -> pykka.Future[Any]:
        raise NotImplementedError

    async def _aask(self, message: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def redeem_code(
        self,
        code: str,
        *,
        redirect_uri: str,
        code_verifier: str | None = None,
        app_id: str | None = None,
    ) -> pykka.Future[UserGrant]:
        """A future of the grant a login's authorization ``code`` redeems (the callback's
        ``?code=``; ``redirect_uri`` exactly as given to ``authorize_url``, and the PKCE
        verifier if a challenge was sent). It learns the user (``open_id``), keeps the grant
        in the store and caches the token: ``get_token(TokenKind.USER, user=grant.open_id)``
        is served from then on. A refused code fails it with ``AuthorizationCodeError``."""
        try:
            message = _redeem(self._apps, code, redirect_uri, code_verifier, app_id)
        except ValueError as exc:
            return _failed(exc)
        return self._ask(message)

    async def aredeem_code(
        self,
        code: str,
        *,
        redirect_uri: str,
        code_verifier: str | None = None,
        app_id: str | None = None,
    ) -> UserGrant:
        """``redeem_code`` for coroutines."""
        message = _redeem(self._apps, code, redirect_uri, code_verifier, app_id)
        grant: UserGrant = await self._aask(message)
        return grant

    def forget_user(self, user: str, *, app_id: str | None = None) -> pykka.Future[bool]:
        """Log ``user`` (an open_id) out: their grant is deleted from the store and nothing of
        theirs is served here any more (gets fail with ``ReauthorizationRequired``); True if
        there was a grant. Other processes on the store drop its token too (a notice)."""
        try:
            key = resolve_key(self._apps, TokenKind.USER, None, app_id, user)
        except ValueError as exc:
            return _failed(exc)
        return self._ask(lambda waiter: m.ForgetUser(key, waiter))

    async def aforget_user(self, user: str, *, app_id: str | None = None) -> bool:
        """``forget_user`` for coroutines."""
        key = resolve_key(self._apps, TokenKind.USER, None, app_id, user)
        forgotten: bool = await self._aask(lambda waiter: m.ForgetUser(key, waiter))
        return forgotten


def _redeem(
    apps: dict[str, AppConfig],
    code: object,
    redirect_uri: object,
    code_verifier: object,
    app_id: str | None,
) -> Callable[[Any], m.Redeem]:
    """The Redeem message for these arguments; ValueError for a bad one (never quoting the
    code or the verifier)."""
    app = resolve_app(apps, app_id)
    if not isinstance(code, str) or not code.strip() or len(code) > _CODE_MAX:
        msg = "code must be the non-empty authorization code from the login's callback"
        raise ValueError(msg)
    if not isinstance(redirect_uri, str) or not redirect_uri:
        msg = "redirect_uri must be the redirect URI given to authorize_url()"
        raise ValueError(msg)
    if code_verifier is not None and (
        not isinstance(code_verifier, str) or not 43 <= len(code_verifier) <= 128
    ):
        msg = "code_verifier must be the verifier of pkce_pair() (43 to 128 characters)"
        raise ValueError(msg)
    return lambda waiter: m.Redeem(app, code, redirect_uri, code_verifier, waiter)


_CODE_MAX = 4096  # an authorization code is ~40 characters


class SystemLogins:
    """The user-login half of ``TokenSystem``'s own methods."""

    _apps: dict[str, AppConfig]

    def _user_source(self) -> UserSource:
        raise NotImplementedError

    def authorize_url(
        self,
        redirect_uri: str,
        *,
        state: str,
        scope: Iterable[str] = (),
        code_challenge: str | None = None,
        app_id: str | None = None,
    ) -> str:
        """The login page for a user's browser, on the app's accounts host (a custom
        ``base_url``: that URL); ``offline_access`` is always asked for. The callback's ``code``
        goes to ``proxy.redeem_code``; ``code_challenge`` comes from :func:`actors.pkce_pair`."""
        app, challenge = resolve_app(self._apps, app_id), code_challenge
        return authorize_url(app, redirect_uri, state=state, scope=scope, code_challenge=challenge)

    def users(self, *, app_id: str | None = None) -> list[UserGrant]:
        """The store's live user grants of the app, by open_id (no tokens in them; blocks)."""
        app, users = resolve_app(self._apps, app_id), self._user_source()
        return sorted((users.user_grant(g) for g in users.grants(app)), key=lambda g: g.open_id)
