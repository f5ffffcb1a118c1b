"""The README's five-minute tour: two clients, one room, one message.

    pip install websockets
    python3 examples/tour.py ws://127.0.0.1:8080/ws

Given a second URL, Alice connects there instead: with two nodes sharing a Redis, the message
crosses from one node to the other.

    python3 examples/tour.py ws://127.0.0.1:8081/ws ws://127.0.0.1:8082/ws
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, alice_url: str) -> None:
    # Bob joins room:1 at the handshake; Alice joins with a `join` frame.
    async with websockets.connect(f"{url}?channel=room:1") as bob, websockets.connect(alice_url) as alice:
        print("bob got:", json.dumps(json.loads(await bob.recv())))  # welcome
        print("alice got:", await alice.recv())  # welcome
        await alice.send(json.dumps({"action": "join", "channel": "room:1", "id": 1}))
        print("alice got:", await alice.recv())  # {"type": "reply", "id": 1, ...}
        await alice.send(json.dumps(
            {"action": "publish", "channel": "room:1", "data": {"text": "hello from alice"}, "id": 2}
        ))
        print("bob got:", json.dumps(json.loads(await bob.recv())))  # the message


if __name__ == "__main__":
    bob_url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws"
    asyncio.run(main(bob_url, sys.argv[2] if len(sys.argv) > 2 else bob_url))
