"""The mirrored session engines: Django's own session storage (here the stock cache backend on
Django's RedisCache, and the database) plus the JSON mirror `[auth.redis_session]` reads, with
the default prefixes and with configured ones."""

from __future__ import annotations

import json

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .test_realtime import RULES, closed_with, frames, redis_broker

pytestmark = pytest.mark.django_db(transaction=True)


def reading_sessions(redis_url: str, prefix: str) -> str:
    """Nodes with the broker prefix `prefix`, reading the mirror the package writes under it."""
    return (
        redis_broker(redis_url)
        + f'prefix = "{prefix}"\n'
        + "[auth]\nanonymous = false\n[auth.redis_session]\n"
        + f'cookie = "sessionid"\nkey = "{prefix}:session:{{id}}"\nuser_field = "_auth_user_id"\n'
        + RULES
    )


@pytest.mark.parametrize(
    "engine, prefix, key_prefix",
    [
        ("switchboard_django.sessions.cache", "sb", ""),
        ("switchboard_django.sessions.cache", "app1", "site"),
        ("switchboard_django.sessions.db", "sb", ""),
        ("switchboard_django.sessions.cached_db", "app2", "v2"),
    ],
)
def test_a_mirrored_session_opens_a_socket_and_its_logout_closes_it(
    client,
    settings,
    django_user_model,
    redis_url,
    start_node,
    switchboard,
    engine,
    prefix,
    key_prefix,
):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": key_prefix,
        }
    }
    settings.SESSION_ENGINE = engine
    switchboard(PREFIX=prefix)
    django_user_model.objects.create_user("bob", password="pw-1")
    assert client.login(username="bob", password="pw-1")
    session = client.cookies["sessionid"].value
    store = redis.Redis.from_url(redis_url)
    mirror = store.get(f"{prefix}:session:{session}")
    user = django_user_model.objects.get(username="bob")
    assert json.loads(mirror) == {"_auth_user_id": str(user.pk)}
    assert 0 < store.ttl(f"{prefix}:session:{session}") <= settings.SESSION_COOKIE_AGE
    node = start_node(reading_sessions(redis_url, prefix))
    switchboard(node, PREFIX=prefix)
    with connect(node.ws, additional_headers={"Cookie": f"sessionid={session}"}) as socket:
        assert frames(socket, 1)[0]["user"] == str(user.pk)
        client.logout()
        assert store.get(f"{prefix}:session:{session}") is None
        # The logout receiver closes it at once.
        assert closed_with(socket) == 4002
    with pytest.raises(InvalidStatus) as refused:
        connect(node.ws, additional_headers={"Cookie": f"sessionid={session}"})
    assert refused.value.response.status_code == 401


def test_an_anonymous_session_has_no_mirror(client, settings, redis_url, switchboard):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    }
    settings.SESSION_ENGINE = "switchboard_django.sessions.cache"
    session = client.session
    session["cart"] = [1, 2]
    session.save()
    assert redis.Redis.from_url(redis_url).get(f"sb:session:{session.session_key}") is None
