"""Session engines that also write a JSON mirror Switchboard's `[auth.redis_session]` reads.

Django's stock sessions are not readable by anything but Django: the cache backend on
`RedisCache` stores a pickled dict under a key made of `KEY_PREFIX`, the cache version and
`django.contrib.sessions.cache<id>`; the database backend keeps them in SQL. Rather than teach the
server to unpickle what it reads from Redis (a decoder of a code-execution format facing bytes
anyone with Redis access can write, tied to Django's key layout and versions), these engines
keep Django's own storage exactly as it is and write, beside it, `PREFIX:session:<key>` =
`{"_auth_user_id": "<pk>"}` with the session's expiry. A logged-out or anonymous session has no
mirror (the server treats it as a visitor); deleting, flushing or cycling a session deletes the
old mirror, so its sockets close at the next re-validation (and at once through the logout
receiver).

    SESSION_ENGINE = "switchboard_django.sessions.cache"      # or .db, .cached_db

and on the nodes:

    [auth.redis_session]
    cookie = "sessionid"
    key = "sb:session:{id}"
    user_field = "_auth_user_id"
"""

from __future__ import annotations

import json
import logging

import redis

from .. import client, conf

log = logging.getLogger("switchboard_django")

USER_FIELD = "_auth_user_id"


def mirror_key(session_key: str) -> str:
    return f"{conf.settings().prefix}:session:{session_key}"


class MirroredSession:
    """Mixed into a Django `SessionStore`: every save and delete is mirrored."""

    def save(self, must_create=False):
        super().save(must_create=must_create)
        self._mirror()

    def delete(self, session_key=None):
        key = session_key or self.session_key
        super().delete(session_key)
        if key:
            self._unmirror(key)

    def _mirror(self):
        if not self.session_key:
            return
        user = self._get_session(no_load=False).get(USER_FIELD)
        if user is None:
            self._unmirror(self.session_key)
            return
        settings = conf.settings()
        age = max(1, int(self.get_expiry_age()))
        try:
            client.redis_for(settings).set(
                mirror_key(self.session_key), json.dumps({USER_FIELD: str(user)}), ex=age
            )
        except redis.RedisError as error:
            # The session itself is saved; without its mirror the socket is refused, never
            # let in by mistake.
            log.warning("could not mirror a session for Switchboard: %s", error)

    def _unmirror(self, session_key: str):
        try:
            client.redis_for(conf.settings()).delete(mirror_key(session_key))
        except redis.RedisError as error:
            log.warning("could not remove a session's Switchboard mirror: %s", error)
