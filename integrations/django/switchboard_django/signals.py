"""Sessions kept honest with no app code: the sockets of a session that ends close at once, on
every node.

- `user_logged_out`: the session's sockets get 4002 `logged out`.
- A password change: Django's `update_session_auth_hash` gives the changing browser a new
  session key, and every other session of the user stops authenticating. The package notices
  the password hash change when the user is saved and closes all the user's sockets with 4001:
  the JS client reconnects at once, with the new cookie in the browser that changed it, and is
  refused in the others.
"""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from . import client, conf

log = logging.getLogger("switchboard_django")


def _enabled() -> bool:
    return not conf.problems() and conf.settings().disconnect_on_logout


@receiver(user_logged_out, dispatch_uid="switchboard_logged_out")
def close_sockets_of_session(sender, request, user, **kwargs):
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if not key or not _enabled():
        return
    try:
        client.disconnect(session=key, code=4002, reason="logged out")
    except client.SwitchboardError as error:
        # The logout itself must not fail; the sockets close at the next re-validation.
        log.warning("could not close the sockets of a logged-out session: %s", error)


@receiver(pre_save, dispatch_uid="switchboard_password_before")
def remember_password(sender, instance, update_fields=None, **kwargs):
    if sender is not get_user_model() or instance.pk is None:
        return
    if update_fields is not None and "password" not in update_fields:
        return  # e.g. the last_login update of every login
    previous = (
        sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    )
    instance._switchboard_password_changed = previous is not None and previous != instance.password


@receiver(post_save, dispatch_uid="switchboard_password_after")
def close_sockets_after_password_change(sender, instance, created, **kwargs):
    if created or not getattr(instance, "_switchboard_password_changed", False) or not _enabled():
        return
    instance._switchboard_password_changed = False
    try:
        client.disconnect(user=instance.pk, code=4001, reason="password changed")
    except client.SwitchboardError as error:
        log.warning("could not close the sockets of a user whose password changed: %s", error)
