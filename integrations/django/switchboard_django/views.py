"""The views Switchboard and the JS client call: `whoami` for `[auth.introspect]`, `token` for
`[auth.jwt]` (the client's `getToken`).

`whoami` runs behind the project's own middleware with the socket's forwarded cookie, so
`request.user` and `request.session` are the browser's. It answers `user`, `session`,
`expires_in` (the session's own expiry: the socket closes with 4001 then) and `channels` (from
`SWITCHBOARD["CHANNELS"]`, a dotted path to `channels(user, request) -> list[str]`), or 401 for
a visitor who is not logged in, which refuses the handshake, and at re-validation closes it.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from . import conf, tokens


def channels_of(user, request) -> list[str]:
    path = conf.settings().channels
    if not path:
        return []
    return [str(channel) for channel in import_string(path)(user, request)]


@never_cache
@require_GET
def whoami(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return JsonResponse({"detail": "not logged in"}, status=401)
    session = getattr(request, "session", None)
    answer = {
        "user": str(user.pk),
        "session": getattr(session, "session_key", None),
        "channels": channels_of(user, request),
    }
    if session is not None and session.session_key:
        answer["expires_in"] = session.get_expiry_age()
    return JsonResponse(answer)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def token(request):
    """A token for the logged-in user, as text (what `getToken` returns)."""
    session = getattr(request, "session", None)
    signed = tokens.for_user(
        request.user,
        channels=channels_of(request.user, request),
        session=getattr(session, "session_key", None),
    )
    return JsonResponse({"token": signed, "expires_in": conf.settings().jwt.ttl})
