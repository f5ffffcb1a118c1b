"""django-switchboard: Django's side of a Switchboard deployment.

- Publishing from views, tasks and commands: `publish`, `publish_many`, `send_to_user`,
  `send_to_connection`, `disconnect`, `history`, `presence`, `connections`, and their async
  twins (`apublish`, …), in `client.py`.
- Identity: the introspection view `views.whoami`, tokens for `[auth.jwt]` in `tokens.py`
  and the `views.token` view the JS client's `getToken` calls.
- Sessions kept honest: a logout, or a password change that rotates the session, closes that
  session's sockets on every node (`signals.py`).
- Back-end routes and hooks: `routes.py` (`@switchboard_route`, `@switchboard_hook`, `reply`).
"""

from asgiref.sync import sync_to_async

from .client import (
    SwitchboardError,
    connections,
    disconnect,
    history,
    presence,
    publish,
    publish_many,
    send_to_connection,
    send_to_user,
)

apublish = sync_to_async(publish, thread_sensitive=False)
apublish_many = sync_to_async(publish_many, thread_sensitive=False)
asend_to_user = sync_to_async(send_to_user, thread_sensitive=False)
asend_to_connection = sync_to_async(send_to_connection, thread_sensitive=False)
adisconnect = sync_to_async(disconnect, thread_sensitive=False)
ahistory = sync_to_async(history, thread_sensitive=False)
apresence = sync_to_async(presence, thread_sensitive=False)
aconnections = sync_to_async(connections, thread_sensitive=False)

__all__ = [
    "SwitchboardError",
    "aconnections",
    "adisconnect",
    "ahistory",
    "apresence",
    "apublish",
    "apublish_many",
    "asend_to_connection",
    "asend_to_user",
    "connections",
    "disconnect",
    "history",
    "presence",
    "publish",
    "publish_many",
    "send_to_connection",
    "send_to_user",
]
