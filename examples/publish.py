"""Publish to Switchboard from Python, as a Django view, a Celery task or a cron job would:
one plain Redis PUBLISH, no socket to hold.

    pip install redis
    python3 examples/publish.py redis://127.0.0.1:6379 room:1 '{"text": "hi"}'

Every client in the channel receives {"type": "message", "channel": "room:1", "data": {...}},
on every Switchboard node sharing that Redis.
"""
import json
import sys

import redis


def publish(client: redis.Redis, channel: str, data, prefix: str = "sb") -> int:
    """Sends `data` to every member of `channel`; returns how many nodes received it."""
    return client.publish(f"{prefix}:ch:{channel}", json.dumps({"data": data}))


if __name__ == "__main__":
    url, channel, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    nodes = publish(redis.Redis.from_url(url), channel, data)
    print(f"published to {channel}; {nodes} node(s) have members in it")
