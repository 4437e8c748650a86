"""User access tokens: the OAuth login (:func:`pkce_pair`, the authorize URL, the code
exchange) and the rotation of each user's grant as one transaction (``_rotation``), over the
grant book of the system's store (``actors.stores._grants``).
"""

from actors.users._grant import UserGrant as UserGrant
from actors.users._grant import pkce_pair as pkce_pair

__all__ = ["UserGrant", "pkce_pair"]
