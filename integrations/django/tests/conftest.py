"""Real processes for the package's tests: a `redis-server` and Switchboard nodes built from
this repository (`../../target/debug/switchboard`, or `SWITCHBOARD_BIN`), each on a free
loopback port and stopped afterwards; Django itself is pytest-django's `live_server`. Every
wait is bounded."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / "target" / "debug" / "switchboard"))
WAIT = 10.0
API_KEY = "test-api-key"
JWT_SECRET = "test-jwt-secret-of-at-least-32-bytes!"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def until(check, what: str, wait: float = WAIT):
    deadline = time.monotonic() + wait
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RedisServer:
    """One `redis-server` on a free loopback port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.start()
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self):
        directory = tempfile.mkdtemp(prefix="switchboard-django-redis-")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(self.answers, "redis-server (make test-deps installs it)")

    def restart(self):
        """Killed and started again on the same port, empty (a crash without persistence)."""
        self.stop()
        self.start()

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session")
def redis_url():
    server = RedisServer()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def second_redis_url():
    """Another Redis, for a channel layer sharded over two hosts."""
    server = RedisServer()
    yield server.url
    server.stop()


class Node:
    """One Switchboard node."""

    def __init__(self, config: str):
        directory = Path(tempfile.mkdtemp(prefix="switchboard-django-node-"))
        path = directory / "node.toml"
        path.write_text(config)
        env = {
            **os.environ,
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "SWITCHBOARD_SERVER__BIND": "127.0.0.1:0",
            "SWITCHBOARD_API__KEY": API_KEY,
        }
        self.process = subprocess.Popen(
            [BINARY, "serve", "--config", str(path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        deadline = time.monotonic() + WAIT
        self.base = None
        for line in self.process.stdout:
            match = re.search(r"listening on (http://[0-9.:]+)", line)
            if match:
                self.base = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.base is None:
            self.process.kill()
            raise AssertionError("the node did not start")
        self.ws = self.base.replace("http", "ws") + "/ws"
        # Whatever else it prints is read, so a full pipe never stalls it.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

        def ready():
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as answer:
                    return answer.status == 200
            except OSError:
                return False

        until(ready, f"{self.base} to be ready")

    def stop(self):
        self.process.kill()
        self.process.wait()

    def terminate(self):
        """SIGTERM: the node drains and stops by itself."""
        self.process.terminate()
        self.process.wait(timeout=WAIT)

    def signal(self, number: int):
        self.process.send_signal(number)

    def metric(self, series: str) -> float:
        """The value of one exported series (`name{labels}` as Prometheus prints it), else 0."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=2) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(series + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def start_node():
    """Starts nodes from config texts; stops them after the test."""
    nodes = []

    def start(config: str) -> Node:
        node = Node(config)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def switchboard(settings, redis_url):
    """Points the package at the test Redis (and, once a node runs, its API)."""

    def configure(node: Node | None = None, transport: str = "redis", **more):
        settings.SWITCHBOARD = {
            "REDIS_URL": redis_url,
            "API_URL": node.base if node else "http://127.0.0.1:9",
            "API_KEY": API_KEY,
            "TRANSPORT": transport,
            "TIMEOUT": 5,
            "JWT": {"SECRET": JWT_SECRET},
            "CHANNELS": "tests.project.views.channels",
            **more,
        }

    configure()
    return configure
