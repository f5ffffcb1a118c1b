"""Every snippet of docs/django.md, run: its Python files written out as a project (settings,
views, urls) and served by the live server, its TOML checked by `switchboard check-config` and
run as the nodes' config, then a browser's round trip through them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from websockets.sync.client import connect

import switchboard_django as sb
from switchboard_django import conf

from .conftest import API_KEY, BINARY, JWT_SECRET, REPO
from .test_realtime import closed_with, frames, join

pytestmark = pytest.mark.django_db(transaction=True)

GUIDE = REPO / "docs" / "django.md"


def snippets(language: str) -> dict[str, str]:
    """The guide's `language` blocks, by the file their first line names."""
    found = {}
    for block in re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S):
        first, _, rest = block.partition("\n")
        assert first.startswith("# "), f"a {language} snippet without its file name: {first}"
        found[first[2:].strip()] = block
    return found


def test_the_guide_has_the_snippets_this_test_runs():
    assert set(snippets("python")) == {
        "mysite/settings.py",
        "chat/views.py",
        "realtime/views.py",
        "mysite/urls.py",
    }
    assert set(snippets("toml")) == {"switchboard.toml"}


@pytest.fixture
def project(settings, monkeypatch):
    """The guide's Python files as importable modules, the project's URLs its urls.py."""
    root = Path(tempfile.mkdtemp(prefix="switchboard-docs-"))
    for name, code in snippets("python").items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(code)
    monkeypatch.syspath_prepend(str(root))
    for module in [m for m in sys.modules if m.split(".")[0] in ("mysite", "chat", "realtime")]:
        del sys.modules[module]
    settings.ROOT_URLCONF = "mysite.urls"
    return root


def guide_settings(redis_url: str, api_url: str) -> dict:
    """The guide's settings.py, run with its environment variables set."""
    environment = {
        "REDIS_URL": redis_url,
        "SWITCHBOARD_URL": api_url,
        "SWITCHBOARD_API_KEY": API_KEY,
        "SWITCHBOARD_JWT_SECRET": JWT_SECRET,
    }
    namespace = {"INSTALLED_APPS": ["django.contrib.auth"]}
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        exec(snippets("python")["mysite/settings.py"], namespace)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert "switchboard_django" in namespace["INSTALLED_APPS"]
    return namespace["SWITCHBOARD"]


def guide_node_config(live_server, redis_url: str) -> str:
    toml = snippets("toml")["switchboard.toml"]
    return toml.replace("http://django.internal:8000", live_server.url).replace(
        "redis://redis:6379", redis_url
    )


def test_the_guides_toml_is_a_valid_node_config(live_server, redis_url, tmp_path):
    path = tmp_path / "switchboard.toml"
    path.write_text(guide_node_config(live_server, redis_url))
    checked = subprocess.run(
        [BINARY, "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


def test_the_guides_project_end_to_end(
    client, settings, django_user_model, live_server, redis_url, start_node, project
):
    node = start_node(guide_node_config(live_server, redis_url))
    settings.SWITCHBOARD = guide_settings(redis_url, node.base)
    assert conf.problems() == []
    alice = django_user_model.objects.create_user("alice", password="pw")
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    with connect(node.ws, additional_headers={"Cookie": cookie}) as socket:
        welcome = frames(socket, 1)[0]
        # whoami identified the session; the connect hook joined the inbox.
        assert welcome["user"] == str(alice.pk)
        assert welcome["channels"] == [f"inbox:{alice.pk}"]
        assert join(socket, "room:1")["data"]["offset"] == 0
        # The route view answers and publishes.
        socket.send(json.dumps({"action": "send_message", "id": 7, "room": "1", "text": "hi"}))
        got = frames(socket, 2)
        assert {"type": "reply", "id": 7, "data": {"sent": True}} in got
        published = [frame for frame in got if frame["type"] == "message"]
        assert published[0]["data"] == {"user": "alice", "text": "hi"}
        socket.send(json.dumps({"action": "send_message", "id": 8}))
        assert frames(socket, 1)[0]["code"] == "backend_error"
        # The chat view publishes once its transaction committed.
        answer = client.post("/rooms/1/messages/", {"text": "from the view"})
        assert answer.status_code == 200
        message = frames(socket, 1)[0]
        assert message["data"] == {"user": "alice", "text": "from the view"}
        assert message["offset"] == 2, "recorded in the room's history"
        assert [p["data"]["text"] for p in sb.history("room:1")["publications"]] == [
            "hi",
            "from the view",
        ]
        # The package's token view, for the JS client's getToken.
        assert client.get("/realtime/token/").json()["token"]
        client.logout()
        assert closed_with(socket) == 4002


def blocks_of(guide: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / guide).read_text(), re.S)


def test_the_readmes_and_other_guides_django_snippets_are_the_tested_ones_or_run(
    redis_url, start_node, switchboard, settings
):
    tested = "\n".join(snippets("python").values())
    node = start_node(
        f'[broker]\ntype = "redis"\nurl = "{redis_url}"\n'
        '[[channels]]\npattern = "room:*"\njoin = "anyone"\npresence = true\n'
    )
    ran = []
    for guide in ("README.md", "docs/backend-integration.md", "docs/authentication.md"):
        for block in blocks_of(guide):
            if block in tested:
                continue  # the guide's own views, run by test_the_guides_project_end_to_end
            if block.startswith("# settings.py"):
                namespace = {"INSTALLED_APPS": []}
                os.environ["SWITCHBOARD_API_KEY"] = API_KEY
                try:
                    exec(block, namespace)
                finally:
                    del os.environ["SWITCHBOARD_API_KEY"]
                assert namespace["INSTALLED_APPS"] == ["switchboard_django"]
                settings.SWITCHBOARD = namespace["SWITCHBOARD"]
                assert conf.problems() == []
                ran.append(guide)
                continue
            for transport in ("http", "redis"):
                switchboard(node, transport=transport)
                with connect(f"{node.ws}?channel=room:1") as member:
                    frames(member, 1)  # welcome
                    exec(block, {})
                    got = frames(member, 1)[0]
                    while got["type"] != "message":  # presence events of the channel
                        got = frames(member, 1)[0]
                    assert got["data"] == {"text": "hi"}, guide
            ran.append(guide)
    assert ran == ["README.md", "README.md", "docs/backend-integration.md"]
