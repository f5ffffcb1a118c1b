"""Django's `cache` session engine, mirrored for Switchboard (see the package's `sessions`)."""

from django.contrib.sessions.backends.cache import SessionStore as DjangoSessionStore

from . import MirroredSession


class SessionStore(MirroredSession, DjangoSessionStore):
    pass
