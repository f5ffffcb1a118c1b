"""The settings dict and its system checks: every problem names its key."""

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from switchboard_django import conf


def messages(settings, value):
    settings.SWITCHBOARD = value
    return [error.msg for error in run_checks() if error.id == "switchboard.E001"]


def test_a_good_dict_passes(settings):
    assert messages(settings, {"REDIS_URL": "redis://127.0.0.1:6379/0"}) == []
    assert messages(settings, {"API_URL": "http://127.0.0.1:8080", "API_KEY": "k"}) == []


@pytest.mark.parametrize(
    "value, key",
    [
        ({}, "API_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://x", "PREFXI": "sb"}, "PREFXI"),
        ({"API_URL": "http://x"}, "API_KEY"),
        ({"REDIS_URL": "redis://x", "PREFIX": "a:b"}, "PREFIX"),
        ({"REDIS_URL": "redis://x", "TIMEOUT": 0}, "TIMEOUT"),
        ({"REDIS_URL": "redis://x", "TRANSPORT": "carrier-pigeon"}, "TRANSPORT"),
        ({"REDIS_URL": "redis://x", "JWT": {}}, "JWT"),
        ({"REDIS_URL": "redis://x", "JWT": {"SECRET": "s", "ALGORITHM": "RS256"}}, "JWT.ALGORITHM"),
        ({"REDIS_URL": "redis://x", "JWT": {"SECRET": "s", "TTL": -1}}, "JWT.TTL"),
    ],
)
def test_each_problem_names_its_key(settings, value, key):
    found = messages(settings, value)
    assert any(message.startswith(f"SWITCHBOARD[{key!r}]") for message in found), found
    with pytest.raises(ImproperlyConfigured, match=key.replace(".", r"\.")):
        conf.settings()


def test_no_dict_at_all(settings):
    del settings.SWITCHBOARD
    assert messages(settings, None) == [
        'SWITCHBOARD is not set: add SWITCHBOARD = {"API_URL": …, "API_KEY": …}'
    ]
