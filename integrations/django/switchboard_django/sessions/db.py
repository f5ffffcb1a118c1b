"""Django's `db` session engine, mirrored for Switchboard (see the package's `sessions`)."""

from django.contrib.sessions.backends.db import SessionStore as DjangoSessionStore

from . import MirroredSession


class SessionStore(MirroredSession, DjangoSessionStore):
    pass
