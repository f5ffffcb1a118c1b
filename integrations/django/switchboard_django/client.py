"""Reaching Switchboard from Django code: publish, send, disconnect, and read history, presence
and connections.

Two transports. Redis (`REDIS_URL`, the default when set): a publication is one
`FCALL PREFIX_publish` (recorded when the channel's rule keeps history, published plainly
otherwise; docs/protocol.md §7), messages to users and control ops are `PUBLISH`es, as the
nodes read them (§6). HTTP (`API_URL` + `API_KEY`): the server API. Presence and connections
live in the nodes' registry and always go through the API. Data is encoded with
`DjangoJSONEncoder` (datetimes, decimals, UUIDs, lazy strings).

Errors are `SwitchboardError` with the server's `status` and `reason`; nothing is retried here
(a failed call did nothing, so the caller may retry).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import redis
from django.core.serializers.json import DjangoJSONEncoder

from . import conf


def _valid_code(code: int) -> bool:
    """The close codes a disconnect may carry (protocol §6): 1000 or 3000–4999."""
    return code == 1000 or 3000 <= code <= 4999


class SwitchboardError(Exception):
    """A call Switchboard refused or that did not reach it."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


def encode(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"))


_redis_lock = threading.Lock()
_redis_clients: dict[str, redis.Redis] = {}


def redis_for(settings: conf.Settings) -> redis.Redis:
    """The process's client of `REDIS_URL` (one per URL, shared by threads; also the session
    mirror's, `sessions/`)."""
    with _redis_lock:
        client = _redis_clients.get(settings.redis_url)
        if client is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.timeout,
                socket_connect_timeout=settings.timeout,
            )
            _redis_clients[settings.redis_url] = client
        return client


def _api(method: str, path: str, body: Any = None, query: dict | None = None) -> Any:
    settings = conf.settings()
    if not settings.api_url:
        raise SwitchboardError(f"{path} needs SWITCHBOARD['API_URL'] (the server API)")
    url = settings.api_url + path
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    data = None if body is None else encode(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {settings.api_key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        reason = None
        try:
            reason = json.loads(error.read()).get("reason")
        except (ValueError, AttributeError):
            pass
        raise SwitchboardError(
            f"{method} {path}: {error.code} {reason or error.reason}", error.code, reason
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise SwitchboardError(f"{method} {path}: Switchboard unreachable ({error})") from None
    return json.loads(text) if text else None


def _publish_redis(settings: conf.Settings, channels: list[str], envelope: str) -> None:
    client = redis_for(settings)
    try:
        pipe = client.pipeline(transaction=False)
        for channel in channels:
            pipe.fcall(f"{settings.prefix}_publish", 1, f"{settings.prefix}:ch:{channel}", envelope)
        results = pipe.execute(raise_on_error=False)
        missing = [
            channel
            for channel, result in zip(channels, results, strict=True)
            if isinstance(result, redis.ResponseError)
            and "function not found" in str(result).lower()
        ]
        failed = [
            result
            for result in results
            if isinstance(result, Exception) and "function not found" not in str(result).lower()
        ]
        if failed:
            raise SwitchboardError(f"publish: Redis refused it ({failed[0]})")
        # No node has installed the library yet (none has started): publish plainly, as a
        # node would for a channel without history.
        for channel in missing:
            client.publish(f"{settings.prefix}:ch:{channel}", envelope)
    except redis.RedisError as error:
        raise SwitchboardError(f"publish: Redis unreachable ({error})") from None


def publish_many(channels: list[str], data: Any) -> None:
    """Publishes `data` to every channel of `channels` (recorded where history is kept)."""
    channels = list(channels)
    if not channels or not all(isinstance(channel, str) and channel for channel in channels):
        raise ValueError("channels must be a non-empty list of channel names")
    settings = conf.settings()
    if settings.transport == "redis":
        _publish_redis(settings, channels, encode({"data": data}))
    else:
        _api("POST", "/api/publish", {"channels": channels, "data": data})


def publish(channel: str, data: Any) -> None:
    """Publishes `data` to `channel`: its members get `{"type": "message", "channel", "data"}`."""
    publish_many([channel], data)


def _control(settings: conf.Settings, op: dict) -> None:
    try:
        redis_for(settings).publish(f"{settings.prefix}:control", encode(op))
    except redis.RedisError as error:
        raise SwitchboardError(f"{op['op']}: Redis unreachable ({error})") from None


def send_to_user(user: Any, data: Any) -> None:
    """Sends `data` to every socket of `user` (a user object or its id), on every node."""
    user_id = str(getattr(user, "pk", user))
    settings = conf.settings()
    if settings.transport == "redis":
        try:
            redis_for(settings).publish(f"{settings.prefix}:user:{user_id}", encode({"data": data}))
        except redis.RedisError as error:
            raise SwitchboardError(f"send: Redis unreachable ({error})") from None
    else:
        _api("POST", "/api/send", {"user": user_id, "data": data})


def send_to_connection(connection: str, data: Any) -> None:
    """Sends `data` to one socket (the `connection_id` of its `welcome`)."""
    settings = conf.settings()
    if settings.transport == "redis":
        _control(settings, {"op": "send", "connection": connection, "data": data})
    else:
        _api("POST", "/api/send", {"connection": connection, "data": data})


def disconnect(
    *,
    user: Any = None,
    session: str | None = None,
    connection: str | None = None,
    code: int = 4002,
    reason: str = "logged out",
) -> None:
    """Closes, on every node, the sockets of exactly one of `user`, `session`, `connection`."""
    targets = {
        "user": None if user is None else str(getattr(user, "pk", user)),
        "session": session,
        "connection": connection,
    }
    named = {key: value for key, value in targets.items() if value is not None}
    if len(named) != 1:
        raise ValueError("disconnect needs exactly one of user=, session=, connection=")
    if not _valid_code(code):
        raise ValueError("code must be 1000 or 3000-4999")
    if len(reason.encode()) > 123:
        raise ValueError("reason must fit a close frame (123 bytes)")
    settings = conf.settings()
    op = {"op": "disconnect", **named, "code": code, "reason": reason}
    if settings.transport == "redis":
        _control(settings, op)
    else:
        _api("POST", "/api/disconnect", {**named, "code": code, "reason": reason})


def history(
    channel: str, *, since: int | None = None, limit: int = 100, newest_first: bool = False
) -> dict:
    """A history channel's publications: `{"channel", "offset", "epoch", "publications": [...]}`."""
    settings = conf.settings()
    if settings.transport != "redis":
        query = {"channel": channel, "since": since, "limit": limit}
        if newest_first:
            query["newest_first"] = "true"
        return _api("GET", "/api/history", query=query)
    try:
        answer = redis_for(settings).fcall(
            f"{settings.prefix}_history",
            1,
            f"{settings.prefix}:ch:{channel}",
            "" if since is None else str(since),
            "",
            str(limit),
            "1" if newest_first else "0",
        )
    except redis.RedisError as error:
        raise SwitchboardError(f"history: Redis refused it ({error})") from None
    if not isinstance(answer, list) or len(answer) < 2:
        raise SwitchboardError("history: an unexpected answer from Redis")
    top, epoch, *envelopes = answer
    publications = []
    for raw in envelopes:
        try:
            envelope = json.loads(raw)
        except (ValueError, TypeError):
            continue  # a MessagePack envelope: the API reads those
        item = {"offset": envelope.get("offset"), "data": envelope.get("data")}
        if "from" in envelope:
            item["from"] = envelope["from"]
        publications.append(item)
    return {
        "channel": channel,
        "offset": int(top),
        "epoch": epoch.decode() if isinstance(epoch, bytes) else str(epoch),
        "publications": publications,
    }


def presence(channel: str) -> dict:
    """Who is in a `presence = true` channel: `{"channel", "connections", "users": [...]}`."""
    return _api("GET", "/api/presence", query={"channel": channel})


def connections(*, user: Any = None, channel: str | None = None, limit: int = 1000) -> list[dict]:
    """Open sockets, cluster-wide: of `user`, in `channel`, or all."""
    if user is not None and channel is not None:
        raise ValueError("connections takes user= or channel=, not both")
    query = {"limit": limit, "channel": channel}
    if user is not None:
        query["user"] = str(getattr(user, "pk", user))
    return _api("GET", "/api/connections", query=query)["connections"]
