"""The package against real Django (pytest-django's live server), a real Redis and real
Switchboard nodes: sockets opened with a Django session cookie through introspection or with a
token from `for_user`, publications from Django code, a logout and a password change that close
sockets on two nodes at once, route views and hooks, history, the management command."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from contextlib import ExitStack

import jwt
import pytest
from django.core.management import call_command
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import switchboard_django as sb
from switchboard_django.tokens import for_user

from .conftest import BINARY, JWT_SECRET
from .project import views

pytestmark = pytest.mark.django_db(transaction=True)

RULES = """
[[channels]]
pattern = "room:*"
join = "authenticated"
publish = "authenticated"
[[channels]]
pattern = "chat:*"
join = "authenticated"
publish = "authenticated"
history_size = 100
history_ttl = "10m"
[[channels]]
pattern = "inbox:*"
join = "claim"
"""


def redis_broker(redis_url: str) -> str:
    return f'[broker]\ntype = "redis"\nurl = "{redis_url}"\n'


def introspecting(live_server, redis_url: str, more: str = "") -> str:
    return (
        redis_broker(redis_url)
        + "[auth]\nanonymous = false\n[auth.introspect]\n"
        + f'url = "{live_server.url}/realtime/whoami/"\ncache_ttl = "0s"\n'
        + more
        + RULES
    )


def jwt_auth() -> str:
    return f'[auth]\nanonymous = false\n[auth.jwt]\nsecret = "{JWT_SECRET}"\n'


def frames(socket, count: int, timeout: float = 5.0) -> list[dict]:
    return [json.loads(socket.recv(timeout=timeout)) for _ in range(count)]


def join(socket, channel: str, id: int = 1) -> dict:
    socket.send(json.dumps({"action": "join", "channel": channel, "id": id}))
    return frames(socket, 1)[0]


def closed_with(socket, timeout: float = 1.0) -> int:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            socket.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006
    except TimeoutError:
        pass
    raise AssertionError(f"still open after {timeout} s")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="secret-1")


def cookie_of(client) -> str:
    return f"sessionid={client.cookies['sessionid'].value}"


def test_a_session_cookie_opens_sockets_on_two_nodes_and_a_logout_closes_both_within_a_second(
    client, alice, live_server, redis_url, start_node, switchboard
):
    nodes = [start_node(introspecting(live_server, redis_url)) for _ in range(2)]
    switchboard(nodes[0])
    client.force_login(alice)
    opened = ExitStack()
    sockets = [
        opened.enter_context(connect(node.ws, additional_headers={"Cookie": cookie_of(client)}))
        for node in nodes
    ]
    for socket in sockets:
        welcome = frames(socket, 1)[0]
        assert welcome["type"] == "welcome" and welcome["user"] == str(alice.pk)
        assert join(socket, "room:1") == {"type": "reply", "id": 1, "data": None}
    # A view publishes; both nodes' sockets receive it (Redis, then the HTTP API).
    sb.publish("room:1", {"text": "from a view"})
    for socket in sockets:
        assert frames(socket, 1)[0] == {
            "type": "message",
            "channel": "room:1",
            "data": {"text": "from a view"},
        }
    switchboard(nodes[1], transport="http")
    sb.publish_many(["room:1", "room:2"], {"text": "over the API"})
    for socket in sockets:
        assert frames(socket, 1)[0]["data"] == {"text": "over the API"}
    # The logout view, as a browser would use it.
    switchboard(nodes[0])
    assert client.post("/accounts/logout/").status_code in (200, 302)
    assert [closed_with(socket) for socket in sockets] == [4002, 4002]
    opened.close()


def test_a_visitor_who_is_not_logged_in_is_refused_and_whoami_says_401(
    client, live_server, redis_url, start_node, switchboard
):
    node = start_node(introspecting(live_server, redis_url))
    switchboard(node)
    assert client.get("/realtime/whoami/").status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        connect(node.ws, additional_headers={"Cookie": "sessionid=not-a-session"})
    assert refused.value.response.status_code == 401


def test_whoami_answers_the_user_the_session_its_expiry_and_channels(client, alice, switchboard):
    client.force_login(alice)
    answer = client.get("/realtime/whoami/").json()
    assert answer["user"] == str(alice.pk)
    assert answer["session"] == client.cookies["sessionid"].value
    assert answer["channels"] == [f"inbox:{alice.pk}"]
    assert 0 < answer["expires_in"] <= 1209600


def test_a_password_change_closes_the_users_sockets(
    client, alice, live_server, redis_url, start_node, switchboard
):
    node = start_node(introspecting(live_server, redis_url))
    switchboard(node)
    client.force_login(alice)
    with connect(node.ws, additional_headers={"Cookie": cookie_of(client)}) as socket:
        assert frames(socket, 1)[0]["type"] == "welcome"
        alice.last_login = None
        alice.save(update_fields=["last_login"])  # not a password change
        alice.set_password("secret-2")
        alice.save()
        assert closed_with(socket) == 4001


def test_a_token_from_for_user_opens_a_socket_and_its_channels_claim_joins(
    alice, redis_url, start_node, switchboard
):
    node = start_node(redis_broker(redis_url) + jwt_auth() + RULES)
    switchboard(node)
    token = for_user(alice, channels=[f"inbox:{alice.pk}"], session="s-1")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(alice.pk) and claims["sid"] == "s-1" and claims["exp"] > time.time()
    with connect(f"{node.ws}?token={token}") as socket:
        assert frames(socket, 1)[0]["user"] == str(alice.pk)
        assert join(socket, f"inbox:{alice.pk}")["type"] == "reply"
        assert join(socket, "inbox:someone-else", 2)["code"] == "forbidden"
        sb.disconnect(session="s-1")
        assert closed_with(socket) == 4002


def test_the_token_view_needs_a_login_and_never_signs_for_an_anonymous_user(
    client, alice, switchboard
):
    anonymous = client.get("/realtime/token/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(ValueError):
        for_user(AnonymousUser())
    client.force_login(alice)
    answer = client.get("/realtime/token/").json()
    claims = jwt.decode(answer["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(alice.pk)
    assert claims["sid"] == client.cookies["sessionid"].value
    assert claims["channels"] == [f"inbox:{alice.pk}"]


def test_a_route_view_answers_with_instructions_and_the_hooks_see_the_user(
    client, alice, live_server, redis_url, start_node, switchboard
):
    routes = (
        "[routes]\n"
        f'send_message = "{live_server.url}/realtime/send_message/"\n'
        f'connect = "{live_server.url}/realtime/connect/"\n'
        f'disconnect = "{live_server.url}/realtime/disconnect/"\n'
    )
    node = start_node(
        redis_broker(redis_url)
        + f'[auth]\nanonymous = true\n[auth.jwt]\nsecret = "{JWT_SECRET}"\n'
        + "[backend]\nforward_headers = []\n"
        + routes
        + RULES
    )
    switchboard(node)
    # A JWT socket: the hooks identify the caller from what Switchboard sends, not a cookie.
    views.DISCONNECTED.clear()
    with connect(f"{node.ws}?token={for_user(alice)}") as socket:
        welcome = frames(socket, 1)[0]
        assert welcome["channels"] == [f"inbox:{alice.pk}"], "joined by the connect hook"
        socket.send(json.dumps({"action": "send_message", "id": 7, "room": "9", "text": "hi"}))
        got = frames(socket, 2)
        assert {
            "type": "message",
            "channel": "room:9",
            "data": {"user": "alice", "text": "hi"},
        } in got
        assert {"type": "reply", "id": 7, "data": {"sent": True}} in got
        socket.send(json.dumps({"action": "send_message", "id": 8}))
        error = frames(socket, 1)[0]
        assert error["code"] == "backend_error" and "room and text" in error["reason"]
    # The connect hook refuses a visitor who is not logged in.
    with pytest.raises(InvalidStatus) as refused:
        connect(node.ws)
    assert refused.value.response.status_code == 403
    time.sleep(0.5)
    assert views.DISCONNECTED[:1] == [("alice", 1000)]


def test_a_route_view_refuses_callers_without_the_key(client, switchboard):
    assert (
        client.post("/realtime/send_message/", "{}", content_type="application/json").status_code
        == 403
    )
    wrong = client.post(
        "/realtime/send_message/",
        "{}",
        content_type="application/json",
        HTTP_X_SWITCHBOARD_KEY="nope",
    )
    assert wrong.status_code == 403
    assert client.get("/realtime/send_message/").status_code == 405


def test_history_is_recorded_through_redis_and_read_over_both_transports(
    alice, redis_url, start_node, switchboard
):
    node = start_node(redis_broker(redis_url) + jwt_auth() + RULES)
    switchboard(node)
    for n in range(3):
        sb.publish("chat:7", {"n": n})
    over_redis = sb.history("chat:7")
    assert [p["offset"] for p in over_redis["publications"]] == [1, 2, 3]
    assert [p["data"] for p in over_redis["publications"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    switchboard(node, transport="http")
    over_http = sb.history("chat:7", since=1)
    assert over_http["epoch"] == over_redis["epoch"] and over_http["offset"] == 3
    assert [p["data"] for p in over_http["publications"]] == [{"n": 1}, {"n": 2}]
    # A socket that resumes from offset 1 gets the rest.
    token = for_user(alice)
    with connect(f"{node.ws}?token={token}") as socket:
        frames(socket, 1)
        socket.send(
            json.dumps(
                {
                    "action": "join",
                    "channel": "chat:7",
                    "id": 1,
                    "since": {"offset": 1, "epoch": over_redis["epoch"]},
                }
            )
        )
        got = frames(socket, 3)
        assert [frame.get("offset") for frame in got[:2]] == [2, 3]
        assert got[2]["data"]["recovered"] is True


def test_send_presence_connections_and_the_management_command(
    alice, redis_url, start_node, switchboard, capsys
):
    node = start_node(redis_broker(redis_url) + jwt_auth() + RULES)
    switchboard(node)
    with connect(f"{node.ws}?token={for_user(alice)}") as socket:
        connection = frames(socket, 1)[0]["connection_id"]
        assert join(socket, "room:3")["type"] == "reply"
        sb.send_to_user(alice, {"hello": "alice"})
        assert frames(socket, 1)[0] == {"type": "message", "data": {"hello": "alice"}}
        sb.send_to_connection(connection, {"hello": "socket"})
        assert frames(socket, 1)[0] == {"type": "message", "data": {"hello": "socket"}}
        listed = until_listed(alice)
        assert [c["id"] for c in listed] == [connection]
        call_command("switchboard", "publish", "room:3", '{"from": "manage.py"}')
        assert frames(socket, 1)[0]["data"] == {"from": "manage.py"}
        call_command("switchboard", "connections", "--user", str(alice.pk))
        assert connection in capsys.readouterr().out
        call_command(
            "switchboard",
            "disconnect",
            "--connection",
            connection,
            "--code",
            "4003",
            "--reason",
            "bye",
        )
        assert closed_with(socket) == 4003


def until_listed(user):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        listed = sb.connections(user=user)
        if listed:
            return listed
        time.sleep(0.05)
    raise AssertionError("the connection was never listed")


def test_the_config_command_prints_what_the_nodes_need(switchboard, capsys, redis_url):
    call_command("switchboard", "config", "--site", "http://django.internal:8000")
    out = capsys.readouterr().out
    assert (
        'allowed_origins = ["http://127.0.0.1:8000", "https://127.0.0.1", "http://127.0.0.1"' in out
    )
    assert 'url = "http://django.internal:8000/realtime/whoami/"' in out
    assert f'url = "{redis_url}"' in out
    assert '[routes]\nsend_message = "http://django.internal:8000/realtime/send_message/"' in out
    assert 'connect = "http://django.internal:8000/realtime/connect/"' in out
    assert "test-api-key" not in out
    assert "[bridge" not in out, "no channel layer, no bridge"


def test_the_config_command_mirrors_the_channel_layer_for_the_bridge(
    switchboard, settings, capsys, redis_url, tmp_path
):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [redis_url, ("127.0.0.1", 6380)],
                "prefix": "myapp",
                "group_expiry": 3600,
                "capacity": 500,
                "symmetric_encryption_keys": ["not-printed"],
            },
        }
    }
    call_command("switchboard", "config", "--site", "http://django.internal:8000")
    out = capsys.readouterr().out
    assert "not-printed" not in out
    assert f'# hosts = ["{redis_url}", "redis://127.0.0.1:6380"]' in out
    # Uncommented, the section is a valid node config.
    uncommented = re.sub(
        r"^# (\[\[?bridge|layer|hosts|prefix|group|channel|capacity)", r"\1", out, flags=re.M
    )
    path = tmp_path / "node.toml"
    path.write_text(uncommented)
    checked = subprocess.run(
        [BINARY, "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    assert 'prefix = "myapp"' in checked.stdout and "capacity = 500" in checked.stdout


def test_the_async_variants_publish_and_read(redis_url, start_node, switchboard):
    node = start_node(redis_broker(redis_url) + RULES)
    switchboard(node)

    async def from_async_code():
        await sb.apublish("chat:async", {"n": 1})
        return await sb.ahistory("chat:async")

    assert asyncio.run(from_async_code())["publications"][0]["data"] == {"n": 1}


def test_an_rs256_token_from_for_user_opens_a_socket(
    alice, redis_url, start_node, settings, tmp_path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = tmp_path / "jwt.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    node = start_node(
        redis_broker(redis_url)
        + f'[auth]\nanonymous = false\n[auth.jwt]\npublic_key_file = "{public}"\n'
        + 'issuer = "https://django.example"\naudience = ["switchboard"]\n'
        + RULES
    )
    settings.SWITCHBOARD = {
        "REDIS_URL": redis_url,
        "JWT": {
            "PRIVATE_KEY": private,
            "ALGORITHM": "RS256",
            "ISSUER": "https://django.example",
            "AUDIENCE": "switchboard",
        },
    }
    with connect(f"{node.ws}?token={for_user(alice)}") as socket:
        assert frames(socket, 1)[0]["user"] == str(alice.pk)


def test_reply_writes_every_instruction_and_a_reply_that_looks_like_one_stays_data():
    from switchboard_django.routes import reply

    answer = json.loads(
        reply({"ok": 1}, join=["room:2"], leave=["room:1"], publish=[("room:2", {"n": 1})]).content
    )
    assert answer == {
        "leave": ["room:1"],
        "join": ["room:2"],
        "publish": [{"channel": "room:2", "data": {"n": 1}}],
        "reply": {"ok": 1},
    }
    assert json.loads(reply({"join": ["x"]}).content) == {"reply": {"join": ["x"]}}


def test_data_is_encoded_as_django_does(alice, redis_url, start_node, switchboard):
    import datetime
    import decimal
    import uuid

    node = start_node(redis_broker(redis_url) + jwt_auth() + RULES)
    switchboard(node)
    at = datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.timezone.utc)
    with connect(f"{node.ws}?token={for_user(alice)}&channel=room:5") as socket:
        frames(socket, 1)
        data = {"at": at, "price": decimal.Decimal("9.90"), "id": uuid.UUID(int=1)}
        for transport in ("redis", "http"):
            switchboard(node, transport=transport)
            sb.publish("room:5", data)
            assert frames(socket, 1)[0]["data"] == {
                "at": "2026-12-01T12:30:00Z",
                "price": "9.90",
                "id": "00000000-0000-0000-0000-000000000001",
            }
