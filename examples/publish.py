"""Publish to Switchboard from Python, as a Django view, a Celery task or a cron job would:
one plain Redis PUBLISH, no socket to hold; or, with --record, one FCALL that also records the
message in the channel's history (a channel whose rule keeps history; docs/protocol.md §7).

    pip install redis
    python3 examples/publish.py redis://127.0.0.1:6379 room:1 '{"text": "hi"}'
    python3 examples/publish.py --record redis://127.0.0.1:6379 chat:1 '{"text": "kept"}'

Every client in the channel receives {"type": "message", "channel": "room:1", "data": {...}},
on every Switchboard node sharing that Redis.
"""
import json
import sys

import redis


def publish(client: redis.Redis, channel: str, data, prefix: str = "sb") -> int:
    """Sends `data` to every member of `channel`; returns how many nodes received it."""
    return client.publish(f"{prefix}:ch:{channel}", json.dumps({"data": data}))


def record(client: redis.Redis, channel: str, data, prefix: str = "sb"):
    """Records `data` in `channel`'s history and sends it to every member, in one atomic step;
    returns its offset (None for a channel that keeps no history: then it is only sent)."""
    envelope = json.dumps({"data": data})
    return client.fcall(f"{prefix}_publish", 1, f"{prefix}:ch:{channel}", envelope)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    recording = arguments[:1] == ["--record"]
    if recording:
        arguments = arguments[1:]
    url, channel, data = arguments[0], arguments[1], json.loads(arguments[2])
    client = redis.Redis.from_url(url)
    if recording:
        print(f"recorded in {channel} at offset {record(client, channel, data)}")
    else:
        nodes = publish(client, channel, data)
        print(f"published to {channel}; {nodes} node(s) have members in it")
