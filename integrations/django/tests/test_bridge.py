"""The channels_redis bridge against real Django Channels: Django code calls `group_send` on
its own channel layer (channels 4.3, channels_redis 4.3; both layers, with and without
encryption, on one and two Redis shards) and Switchboard clients on two real nodes receive it
once; a Channels consumer in the same group keeps receiving; a node that stops withdraws its
membership, one killed outright lets it lapse; a node that falls behind is counted; hostile
bytes in its channel key are dropped."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from contextlib import ExitStack

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.utils import _consistent_hash
from websockets.sync.client import connect

from .conftest import REPO, RedisServer, until
from .project.consumers import ChatConsumer

# Django rotates keys by putting the new one first; the node's order does not matter.
DJANGO_KEYS = ["rotated-in-key", "older-key"]
NODE_KEYS = ["older-key", "rotated-in-key"]
GROUP_EXPIRY = 3
BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


def node_config(redis_url, layer, hosts, encrypted=False, more=""):
    keys = f"symmetric_encryption_keys = {json.dumps(NODE_KEYS)}\n" if encrypted else ""
    return (
        f'[broker]\ntype = "redis"\nurl = "{redis_url}"\n'
        f'[bridge.channels_redis]\nlayer = "{layer}"\nhosts = {json.dumps(hosts)}\n'
        f'group_expiry = "{GROUP_EXPIRY}s"\n{keys}{more}'
        '[[bridge.channels_redis.groups]]\ngroup = "chat_*"\nchannel = "room:{1}"\n'
    )


@pytest.fixture
def channel_layer(settings):
    """Configures Django's CHANNEL_LAYERS the way a project does, and returns the layer."""

    def configure(layer, hosts, encrypted=False, **config):
        if encrypted:
            config["symmetric_encryption_keys"] = DJANGO_KEYS
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": BACKENDS[layer], "CONFIG": {"hosts": hosts, **config}}
        }
        return get_channel_layer()

    return configure


@pytest.fixture(autouse=True)
def fresh_layers(redis_url, second_redis_url):
    """No channels_redis keys from an earlier test (killed nodes' lapse on their own)."""
    for url in (redis_url, second_redis_url):
        client = redis.Redis.from_url(url)
        for key in client.scan_iter("asgi*"):
            client.delete(key)


@pytest.fixture
def stack():
    with ExitStack() as sockets:
        yield sockets


def joined(stack, url, room):
    socket = stack.enter_context(connect(url, open_timeout=5))
    assert json.loads(socket.recv(timeout=5))["type"] == "welcome"
    socket.send(json.dumps({"action": "join", "channel": f"room:{room}", "id": 1}))
    reply = json.loads(socket.recv(timeout=5))
    assert reply.get("type") == "reply" and reply.get("id") == 1, reply
    return socket


def messages(socket, count, timeout=5.0):
    frames = [json.loads(socket.recv(timeout=timeout)) for _ in range(count)]
    assert all(frame["type"] == "message" for frame in frames), frames
    return frames


def room_on(shard, shards, layer):
    """A room whose group (pub/sub: whose group channel) lives on `shard` of `shards`."""
    for number in range(1000):
        hashed = f"asgi__group__chat_{number}" if layer == "pubsub" else f"chat_{number}"
        if _consistent_hash(hashed, shards) == shard:
            return str(number)
    raise AssertionError("no room name found")


def bridged(node, groups):
    until(lambda: node.metric("switchboard_bridge_groups") == groups, "the bridge to join")


def members(url, group):
    found = redis.Redis.from_url(url).zrange(f"asgi:group:{group}", 0, -1)
    return sorted(member.decode() for member in found)


def channel_key(member):
    """The key group_send writes to for a member channel name (prefix + up to the `!`)."""
    return "asgi" + member[: member.index("!") + 1]


@pytest.mark.parametrize("layer", ["core", "pubsub"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("shards", [1, 2])
def test_group_send_reaches_clients_on_both_nodes_once(
    stack, start_node, channel_layer, redis_url, second_redis_url, layer, encrypted, shards
):
    hosts = [redis_url, second_redis_url][:shards]
    config = node_config(redis_url, layer, hosts, encrypted)
    nodes = [start_node(config), start_node(config)]
    rooms = [room_on(shard, shards, layer) for shard in range(shards)]
    sockets = {
        (n, room): joined(stack, node.ws, room) for n, node in enumerate(nodes) for room in rooms
    }
    for node in nodes:
        bridged(node, len(rooms))
    django_layer = channel_layer(layer, hosts, encrypted)
    for room in rooms:
        for n in (1, 2):
            message = {"type": "chat.message", "text": f"hello {room}", "n": n}
            async_to_sync(django_layer.group_send)(f"chat_{room}", message)
    for (_, room), socket in sockets.items():
        # Both, in order, and nothing twice: a duplicate of the first would come second.
        received = messages(socket, 2)
        assert [frame["channel"] for frame in received] == [f"room:{room}"] * 2
        assert [frame["data"] for frame in received] == [
            {"type": "chat.message", "text": f"hello {room}", "n": n} for n in (1, 2)
        ]
    for node in nodes:
        assert node.metric("switchboard_bridge_received_total") == 2 * len(rooms)
        assert node.metric('switchboard_bridge_dropped_total{reason="decode"}') == 0


@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_a_channels_consumer_in_the_same_group_keeps_receiving(
    stack, start_node, channel_layer, redis_url, layer
):
    node = start_node(node_config(redis_url, layer, [redis_url]))
    socket = joined(stack, node.ws, "7")
    bridged(node, 1)
    django_layer = channel_layer(layer, [redis_url])

    async def consumer_and_send():
        communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/chat/7/")
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        await django_layer.group_send("chat_7", {"type": "chat.message", "text": "to both"})
        event = json.loads(await communicator.receive_from(timeout=5))
        await communicator.disconnect()
        return event

    event = asyncio.run(consumer_and_send())
    assert event == {"type": "chat.message", "text": "to both"}
    assert messages(socket, 1)[0]["data"] == event


def test_a_node_that_stops_withdraws_and_one_killed_lapses(
    stack, start_node, channel_layer, redis_url
):
    config = node_config(redis_url, "core", [redis_url])
    stopping, killed, staying = (start_node(config) for _ in range(3))
    sockets = [joined(stack, node.ws, "9") for node in (stopping, killed, staying)]
    for node in (stopping, killed, staying):
        bridged(node, 1)
    assert len(members(redis_url, "chat_9")) == 3

    stopping.terminate()
    until(lambda: len(members(redis_url, "chat_9")) == 2, "the stopped node to withdraw")
    killed.signal(signal.SIGKILL)
    killed.process.wait(timeout=5)
    django_layer = channel_layer("core", [redis_url], group_expiry=GROUP_EXPIRY)
    send = async_to_sync(django_layer.group_send)
    send("chat_9", {"type": "chat.message", "n": 1})
    assert messages(sockets[2], 1)[0]["data"]["n"] == 1
    # The survivor popped its copy; the killed node's stays in its channel key, unread.
    client = redis.Redis.from_url(redis_url)
    unread = [m for m in members(redis_url, "chat_9") if client.zcard(channel_key(m)) >= 1]
    assert len(unread) == 1, unread
    killed_member = unread[0]

    # Its membership lapses after group_expiry, when a group_send prunes it (the survivor
    # renews only its own).
    def lapsed():
        send("chat_9", {"type": "chat.message", "n": 0})
        time.sleep(0.2)
        return killed_member not in members(redis_url, "chat_9")

    until(lapsed, "the killed node's membership to lapse", wait=GROUP_EXPIRY + 5)
    assert len(members(redis_url, "chat_9")) == 1


def test_a_node_that_falls_behind_is_counted(stack, start_node, channel_layer, redis_url):
    config = node_config(redis_url, "core", [redis_url], more="capacity = 5\n")
    node = start_node(config)
    socket = joined(stack, node.ws, "11")
    bridged(node, 1)
    django_layer = channel_layer("core", [redis_url], capacity=5)
    send = async_to_sync(django_layer.group_send)
    node.signal(signal.SIGSTOP)
    try:
        for n in range(1, 9):
            send("chat_11", {"type": "chat.message", "n": n})
    finally:
        node.signal(signal.SIGCONT)
    until(lambda: node.metric("switchboard_bridge_channel_full_total") >= 1, "a full pop")
    send("chat_11", {"type": "chat.message", "n": 100})
    seen = []
    while not seen or seen[-1] != 100:
        seen.append(messages(socket, 1)[0]["data"]["n"])
    # channels_redis refused what did not fit; what did arrives in order, once.
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert 5 <= len(seen) - 1 < 8, seen


def test_hostile_or_stale_entries_are_dropped(stack, start_node, channel_layer, redis_url):
    node = start_node(node_config(redis_url, "core", [redis_url]))
    socket = joined(stack, node.ws, "13")
    bridged(node, 1)
    (member,) = members(redis_url, "chat_13")
    key = channel_key(member)
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    django_layer = channel_layer("core", [redis_url])
    stale = django_layer.serialize({"type": "chat.message", "__asgi_channel__": [member]})
    client.zadd(key, {b"\x00" * 12 + b"\xc1 not msgpack": now, stale: now - 120})
    other = django_layer.serialize({"type": "x", "__asgi_channel__": ["specific.abc!def"]})
    client.zadd(key, {other: now})
    until(lambda: node.metric('switchboard_bridge_dropped_total{reason="decode"}') == 1, "decode")
    assert node.metric('switchboard_bridge_dropped_total{reason="expired"}') == 1
    assert node.metric('switchboard_bridge_dropped_total{reason="unmapped"}') == 1
    async_to_sync(django_layer.group_send)("chat_13", {"type": "chat.message", "n": 1})
    assert messages(socket, 1)[0]["data"] == {"type": "chat.message", "n": 1}


@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_a_restarted_layer_redis_gets_the_nodes_back_by_itself(
    stack, start_node, channel_layer, redis_url, layer
):
    layer_redis = RedisServer()
    try:
        node = start_node(node_config(redis_url, layer, [layer_redis.url]))
        socket = joined(stack, node.ws, "21")
        bridged(node, 1)
        layer_redis.restart()  # empty: the membership (or subscription) is gone
        django_layer = channel_layer(layer, [layer_redis.url])

        def delivered():
            async_to_sync(django_layer.group_send)("chat_21", {"type": "chat.message", "n": 1})
            try:
                return json.loads(socket.recv(timeout=0.3))["data"]["n"] == 1
            except TimeoutError:
                return False

        until(delivered, "group_send to reach the node again after the restart")
    finally:
        layer_redis.stop()


def test_unmapped_channels_join_no_group(stack, start_node, redis_url):
    node = start_node(node_config(redis_url, "core", [redis_url]))
    socket = stack.enter_context(connect(node.ws, open_timeout=5))
    socket.recv(timeout=5)
    socket.send(json.dumps({"action": "join", "channel": "lobby", "id": 1}))
    assert json.loads(socket.recv(timeout=5))["type"] == "reply"
    time.sleep(1.2)  # one membership check
    assert node.metric("switchboard_bridge_groups") == 0
    assert not redis.Redis.from_url(redis_url).keys("asgi:group:*")


GUIDE = REPO / "docs" / "migrating-from-channels.md"


def blocks(text, language):
    """A guide's `language` blocks, by the file their first line names."""
    found = {}
    for block in re.findall(rf"```{language}\n(.*?)```", text, re.S):
        first, _, _ = block.partition("\n")
        found[first.lstrip("# ").strip()] = block
    return found


def test_the_migration_guide_runs_as_written(stack, start_node, settings, redis_url, monkeypatch):
    guide = GUIDE.read_text()
    python, toml = blocks(guide, "python"), blocks(guide, "toml")
    assert set(python) == {"mysite/settings.py (unchanged)", "chat/signals.py (unchanged)"}
    assert set(toml) == {"switchboard.toml"}
    key = "the-projects-channels-key"
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CHANNELS_KEY", key)
    namespace = {}
    exec(python["mysite/settings.py (unchanged)"], namespace)
    settings.CHANNEL_LAYERS = namespace["CHANNEL_LAYERS"]
    variable = "SWITCHBOARD_BRIDGE__CHANNELS_REDIS__SYMMETRIC_ENCRYPTION_KEYS"
    assert variable in guide
    monkeypatch.setenv(variable, json.dumps([key]))
    node = start_node(toml["switchboard.toml"].replace("redis://redis:6379", redis_url))
    socket = joined(stack, node.ws, "42")
    bridged(node, 1)
    exec(python["chat/signals.py (unchanged)"], {})
    (expected,) = re.findall(r"```json\n(.*?)```", guide, re.S)
    assert messages(socket, 1)[0] == json.loads(expected)
    # The README's summary shows the guide's config.
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Migrating from Django Channels", 1)[1].split("\n## ", 1)[0]
    assert blocks(section, "toml") == toml
