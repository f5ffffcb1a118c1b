"""The package's settings: one `SWITCHBOARD` dict in Django's settings, read here with defaults.

Everything else asks `settings()` for a value; `problems()` lists what is wrong with the dict, each
problem naming its key, for the system checks (`checks.py`) and for errors raised at use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.conf import settings as django_settings

KNOWN = {
    "REDIS_URL",
    "API_URL",
    "API_KEY",
    "PREFIX",
    "TRANSPORT",
    "TIMEOUT",
    "CHANNELS",
    "JWT",
    "DISCONNECT_ON_LOGOUT",
}
JWT_KNOWN = {"SECRET", "PRIVATE_KEY", "ALGORITHM", "TTL", "ISSUER", "AUDIENCE", "SESSION_CLAIM"}


@dataclass(frozen=True)
class Jwt:
    secret: str | None = None
    private_key: str | None = None
    algorithm: str = "HS256"
    ttl: int = 900
    issuer: str | None = None
    audience: str | list[str] | None = None
    session_claim: str = "sid"


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    api_url: str | None = None
    api_key: str = ""
    prefix: str = "sb"
    transport: str = "redis"
    timeout: float = 5.0
    channels: str | None = None
    jwt: Jwt = field(default_factory=Jwt)
    disconnect_on_logout: bool = True


def describe(key: str, message: str) -> str:
    """One problem as the checks and errors say it."""
    return f"SWITCHBOARD {message}" if key == "SWITCHBOARD" else f"SWITCHBOARD[{key!r}] {message}"


def raw() -> dict:
    value = getattr(django_settings, "SWITCHBOARD", {})
    return value if isinstance(value, dict) else {}


def problems() -> list[tuple[str, str]]:
    """What is wrong with `settings.SWITCHBOARD`: (key, message) pairs."""
    value = getattr(django_settings, "SWITCHBOARD", None)
    if value is None:
        return [("SWITCHBOARD", 'is not set: add SWITCHBOARD = {"API_URL": …, "API_KEY": …}')]
    if not isinstance(value, dict):
        return [("SWITCHBOARD", "must be a dict")]
    found = []
    for key in sorted(set(value) - KNOWN):
        found.append((key, f"is not a setting (known: {', '.join(sorted(KNOWN))})"))
    for key, schemes in (
        ("REDIS_URL", {"redis", "rediss", "unix"}),
        ("API_URL", {"http", "https"}),
    ):
        url = value.get(key)
        if url is not None and (not isinstance(url, str) or urlparse(url).scheme not in schemes):
            found.append((key, f"must be a URL with scheme {' or '.join(sorted(schemes))}"))
    transport = value.get("TRANSPORT", "redis" if value.get("REDIS_URL") else "http")
    if transport not in ("redis", "http"):
        found.append(("TRANSPORT", 'must be "redis" or "http"'))
    elif transport == "redis" and not value.get("REDIS_URL"):
        found.append(("REDIS_URL", 'is required with TRANSPORT "redis"'))
    elif transport == "http" and not value.get("API_URL"):
        found.append(("API_URL", 'is required with TRANSPORT "http" (or set REDIS_URL)'))
    engine = getattr(django_settings, "SESSION_ENGINE", "")
    if engine.startswith("switchboard_django.sessions") and not value.get("REDIS_URL"):
        found.append(("REDIS_URL", f"is required by SESSION_ENGINE {engine!r} (its mirror)"))
    if value.get("API_URL") and not value.get("API_KEY"):
        found.append(("API_KEY", "is required with API_URL (the node's [api] key)"))
    prefix = value.get("PREFIX", "sb")
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        found.append(
            ("PREFIX", "must be a non-empty string without ':' (the nodes' broker.prefix)")
        )
    timeout = value.get("TIMEOUT", 5)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        found.append(("TIMEOUT", "must be a positive number of seconds"))
    jwt = value.get("JWT")
    if jwt is not None:
        if not isinstance(jwt, dict):
            found.append(("JWT", "must be a dict"))
        else:
            for key in sorted(set(jwt) - JWT_KNOWN):
                found.append(
                    (f"JWT.{key}", f"is not a setting (known: {', '.join(sorted(JWT_KNOWN))})")
                )
            if bool(jwt.get("SECRET")) == bool(jwt.get("PRIVATE_KEY")):
                found.append(
                    ("JWT", "needs exactly one of SECRET (HS256) and PRIVATE_KEY (RS256, ES256)")
                )
            algorithm = jwt.get("ALGORITHM", "HS256" if jwt.get("SECRET") else "RS256")
            family = "HS" if jwt.get("SECRET") else ("RS", "ES", "PS", "Ed")
            if not isinstance(algorithm, str) or not algorithm.startswith(family):
                found.append(
                    (
                        "JWT.ALGORITHM",
                        "does not match the key "
                        "(HS* with SECRET; RS*, ES*, PS*, EdDSA with PRIVATE_KEY)",
                    )
                )
            ttl = jwt.get("TTL", 900)
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
                found.append(("JWT.TTL", "must be a positive number of seconds"))
    return found


def settings() -> Settings:
    """The settings, validated; ImproperlyConfigured naming the first bad key."""
    from django.core.exceptions import ImproperlyConfigured

    found = problems()
    if found:
        raise ImproperlyConfigured(describe(*found[0]))
    value = raw()
    jwt = value.get("JWT") or {}
    return Settings(
        redis_url=value.get("REDIS_URL"),
        api_url=(value.get("API_URL") or "").rstrip("/") or None,
        api_key=value.get("API_KEY", ""),
        prefix=value.get("PREFIX", "sb"),
        transport=value.get("TRANSPORT", "redis" if value.get("REDIS_URL") else "http"),
        timeout=float(value.get("TIMEOUT", 5)),
        channels=value.get("CHANNELS"),
        jwt=Jwt(
            secret=jwt.get("SECRET"),
            private_key=jwt.get("PRIVATE_KEY"),
            algorithm=jwt.get("ALGORITHM", "HS256" if jwt.get("SECRET") else "RS256"),
            ttl=jwt.get("TTL", 900),
            issuer=jwt.get("ISSUER"),
            audience=jwt.get("AUDIENCE"),
            session_claim=jwt.get("SESSION_CLAIM", "sid"),
        ),
        disconnect_on_logout=bool(value.get("DISCONNECT_ON_LOGOUT", True)),
    )
