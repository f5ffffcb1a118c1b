#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/seeds/<target>/) from the shapes the tests use:
client frames, envelopes, control ops, tokens, gateway headers, back-end answers and configs.
Run from anywhere; it rewrites the seed files in place."""

import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def msgpack(value):
    """A minimal MessagePack encoder (maps, arrays, strings, ints, bools, null)."""
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        if -32 <= value < 0:
            return struct.pack("b", value)
        if value >= 2**63:
            return b"\xcf" + struct.pack(">Q", value)
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, str):
        data = value.encode()
        if len(data) < 32:
            return bytes([0xA0 | len(data)]) + data
        if len(data) < 256:
            return b"\xd9" + bytes([len(data)]) + data
        return b"\xda" + struct.pack(">H", len(data)) + data
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(msgpack(item) for item in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(
            msgpack(key) + msgpack(item) for key, item in value.items()
        )
    raise TypeError(value)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header, claims, secret=b"fuzzing-secret"):
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(signature)


FRAMES = [
    {"action": "join", "channel": "room:1", "id": 1},
    {"action": "leave", "channel": "room:1", "id": 2},
    {"action": "publish", "channel": "room:1", "data": {"text": "hi", "n": [1, 2.5, None]}, "id": 3},
    {"action": "ping", "id": 4},
    {"action": "refresh", "token": "a.b.c", "id": 5},
    {"action": "sendMessage", "room": "lobby", "text": "hello", "id": 6},
    {"action": "join", "channel": "x" * 300},
    {"action": "publish", "channel": "c", "id": -1},
    {"action": "join", "channel": "chat:1", "id": 7, "since": {"offset": 17, "epoch": "hoorbp98k2"}},
    {"action": "join", "channel": "chat:1", "since": {"offset": 18446744073709551615, "epoch": ""}},
]
ENVELOPES = [
    {"data": {"text": "hello"}},
    {"data": 1, "from": "42"},
    {"data": {"joined": {"user": "42", "connection": "c_1"}}, "kind": "presence"},
    {"data": [[[[1]]]]},
    {"data": {"text": "kept"}, "offset": 18, "epoch": "hoorbp98k2"},
]
CONTROL = [
    {"op": "disconnect", "user": "42"},
    {"op": "disconnect", "session": "s1", "code": 4001, "reason": "expired"},
    {"op": "disconnect", "connection": "c_0000000a1"},
    {"op": "send", "connection": "c_1", "data": {"n": 1}},
]
NOW = 1_790_000_000
CLAIMS = [
    {"sub": "42", "aud": "switchboard", "exp": NOW, "sid": "s", "channels": ["team:*"]},
    {"sub": 7, "aud": ["switchboard", "other"], "exp": 2**63, "nbf": 0},
    {"sub": "", "aud": "switchboard"},
]
ANSWERS = [
    {"user": "42", "session": "s1", "channels": ["team:1"], "expires_in": 3600},
    {"user": 7},
    {"reply": {"ok": True}, "join": ["room:1"], "leave": ["room:0"],
     "publish": [{"channel": "room:1", "data": "hi"}]},
    {"_auth_user_id": "9", "_auth_user_backend": "django.contrib.auth.backends.ModelBackend"},
    # An identity provider's JWKS and discovery documents.
    {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig",
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
    {"issuer": "https://idp.test", "jwks_uri": "https://idp.test/certs"},
]
CONFIGS = [
    '[server]\nbind = "127.0.0.1:0"\nmax_frame_bytes = 1024\nheartbeat_interval = "5s"\nidle_timeout = "20s"\n',
    '[broker]\ntype = "redis"\nurl = "redis://:pw@127.0.0.1:6379/1"\ncluster = false\n',
    '[auth]\nanonymous = false\norder = ["jwt", "gateway"]\n[auth.jwt]\nsecret = "s"\naudience = "switchboard"\n'
    '[auth.gateway]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\nuser_header = "x-user"\n',
    '[[channels]]\npattern = "user:{user}"\njoin = "owner"\npublish = "owner"\npresence = true\n'
    '[routes]\ndefault = "http://127.0.0.1:8000/ws/"\n[backend]\ntimeout = "1s"\n',
    '[server]\nrecovery_limit = 50\n[[channels]]\npattern = "chat:*"\nhistory_size = 100\nhistory_ttl = "10m"\n',
    '[bridge.channels_redis]\nlayer = "core"\nhosts = ["redis://127.0.0.1:6379/0"]\n'
    'group_expiry = "3s"\n[[bridge.channels_redis.groups]]\ngroup = "org.*.chat_*"\n'
    'channel = "chat:{2}@{1}"\n',
]
# What channels_redis's group_send writes (after the serializer's 12-byte random prefix).
LAYER_MESSAGES = [
    {"type": "chat.message", "text": "hi", "__asgi_channel__": ["switchboard.00ff!chat_1"]},
    {"type": "chat.message", "n": 2**40, "nested": {"a": [1, 2.5, None, True]}},
    {"type": "x", "__asgi_channel__": "specific.abc!def"},
]


def write(target, name, data):
    directory = os.path.join(HERE, "seeds", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as file:
        file.write(data if isinstance(data, bytes) else data.encode())


for index, frame in enumerate(FRAMES):
    write("client_frame_json", f"frame{index}", json.dumps(frame))
    write("client_frame_msgpack", f"frame{index}", msgpack(frame))
for index, envelope in enumerate(ENVELOPES):
    write("broker_envelope", f"json{index}", json.dumps(envelope))
    write("broker_envelope", f"msgpack{index}", msgpack(envelope))
for index, op in enumerate(CONTROL):
    write("control_op", f"json{index}", json.dumps(op))
    write("control_op", f"msgpack{index}", msgpack(op))
for index, claims in enumerate(CLAIMS):
    write("jwt", f"token{index}", token({"alg": "HS256", "typ": "JWT"}, claims))
    # The structured form the target signs itself: a split byte, claims, then a header.
    header = json.dumps({"alg": "HS256", "kid": "k1"}).encode()
    write("jwt", f"parts{index}", bytes([len(header)]) + json.dumps(claims).encode() + header)
for index, info in enumerate([{"sub": "u-17", "sid": "s"}, {"sub": 5}, {"name": "no sub"}]):
    encoded = base64.b64encode(json.dumps(info).encode()).decode()
    write("gateway_userinfo", f"userinfo{index}", encoded + "\nu-17")
for index, answer in enumerate(ANSWERS):
    write("backend_answers", f"answer{index}", json.dumps(answer))
for index, message in enumerate(LAYER_MESSAGES):
    write("channels_redis_message", f"message{index}", bytes(range(12)) + msgpack(message))
for index, config in enumerate(CONFIGS):
    write("config", f"config{index}.toml", config)
