"""A client that misses nothing across reconnects (docs/protocol.md §7): it remembers the last
position it saw on a channel that keeps history, and joins again with `since`.

    pip install websockets
    python3 examples/resume.py ws://127.0.0.1:8080/ws chat:1 position.json

Each run prints what it receives for a second (first what it missed since the last run, then
live messages) and saves its position to position.json for the next run. When the server
cannot replay what was missed ("recovered": false: history lost or trimmed), a real client
reloads its state from its back end; this one says so.
"""
import asyncio
import json
import sys

import websockets


def load(path: str):
    try:
        with open(path) as saved:
            return json.load(saved)
    except FileNotFoundError:
        return None


async def follow(url: str, channel: str, path: str, seconds: float = 1.0) -> None:
    position = load(path)
    async with websockets.connect(url) as socket:
        await socket.recv()  # welcome
        join = {"action": "join", "channel": channel, "id": 1}
        if position:
            join["since"] = position
        await socket.send(json.dumps(join))
        try:
            async with asyncio.timeout(seconds):
                async for text in socket:
                    frame = json.loads(text)
                    if frame["type"] == "message":
                        print("message", frame["offset"], json.dumps(frame["data"]))
                    elif frame["type"] == "reply" and frame.get("id") == 1:
                        if frame["data"].get("recovered") is False:
                            print("not recovered: reload from the back end")
                        print("joined at", frame["data"]["offset"])
                    elif frame["type"] == "gap":
                        print("gap: reload from the back end")
                    else:
                        continue
                    position = {"offset": frame.get("offset", frame.get("data", {}).get("offset")),
                                "epoch": frame.get("epoch", frame.get("data", {}).get("epoch"))}
        except TimeoutError:
            pass
    with open(path, "w") as saved:
        json.dump(position, saved)
    print("position", position["offset"], position["epoch"])


if __name__ == "__main__":
    asyncio.run(follow(sys.argv[1], sys.argv[2], sys.argv[3]))
