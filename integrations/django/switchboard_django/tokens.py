"""Tokens for `[auth.jwt]`: `for_user(user, channels=…, ttl=…)` signs what the server checks.

Claims: `sub` (the user's pk), `sid` (the session key, when given: `disconnect(session=…)`
reaches the socket), `channels` (joins under the `claim` rule), `iat`, `exp`, and `iss`/`aud`
when configured. HS* with `JWT.SECRET`, RS*/ES*/PS*/EdDSA with `JWT.PRIVATE_KEY` (PEM; needs
`pip install django-switchboard[crypto]`). Never for an anonymous user.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import jwt

from . import conf


def for_user(
    user, *, channels: Iterable[str] = (), ttl: int | None = None, session: str | None = None
) -> str:
    if user is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        raise ValueError("no token for an anonymous user")
    settings = conf.settings().jwt
    if not (settings.secret or settings.private_key):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SWITCHBOARD['JWT'] needs SECRET or PRIVATE_KEY to sign tokens")
    now = int(time.time())
    claims = {"sub": str(user.pk), "iat": now, "exp": now + (ttl or settings.ttl)}
    channels = list(channels)
    if channels:
        claims["channels"] = channels
    if session:
        claims[settings.session_claim] = session
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    key = settings.secret or settings.private_key
    return jwt.encode(claims, key, algorithm=settings.algorithm)
