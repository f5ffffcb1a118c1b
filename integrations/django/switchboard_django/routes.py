"""Views that Switchboard calls: action routes (`[routes]`) and the `connect` and `disconnect`
hooks, in the API Gateway model: one view per action, given who called.

`@switchboard_route` (and its alias `@switchboard_hook`) makes a view:
- accept only POSTs that carry `X-Switchboard-Key` equal to `SWITCHBOARD["API_KEY"]` (compared
  in constant time; anything else is 403);
- CSRF-exempt, on purpose: the caller is Switchboard, not a browser. It has no CSRF cookie to
  echo, and the shared key it sends in a header is what a cross-site form cannot forge;
- receive a `Call` (`user`, `session`, `connection`, `action`, `body`), with `request.user` set
  from `call.user` (the user Switchboard authenticated, whether by cookie or by JWT), or
  `AnonymousUser`.

A view returns a `JsonResponse` (`reply(...)`, `refuse(...)`), or a plain value, which becomes
the client's reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse, HttpResponseForbidden, HttpResponseNotAllowed, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt

from . import conf
from .client import encode


@dataclass(frozen=True)
class Call:
    """What Switchboard said about the call."""

    connection: str
    user: str | None
    session: str | None
    action: str
    body: Any
    #: For the disconnect hook: the close code and the channels the socket was in.
    raw: dict


def _user(user_id: str | None):
    if user_id is None:
        return AnonymousUser()
    model = get_user_model()
    try:
        return model._default_manager.get(pk=user_id)
    except (model.DoesNotExist, ValueError, TypeError):
        return AnonymousUser()


def switchboard_route(view):
    @csrf_exempt
    @wraps(view)
    def called(request, *args, **kwargs):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        key = conf.settings().api_key
        if not key or not constant_time_compare(request.headers.get("X-Switchboard-Key", ""), key):
            return HttpResponseForbidden()
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"reason": "the body is not JSON"}, status=400)
        if not isinstance(payload, dict):
            return JsonResponse({"reason": "the body is not a JSON object"}, status=400)
        user = payload.get("user")
        call = Call(
            connection=str(payload.get("connection", "")),
            user=None if user is None else str(user),
            session=payload.get("session"),
            action=str(payload.get("action", "")),
            body=payload.get("body"),
            raw=payload,
        )
        request.user = _user(call.user)
        answer = view(request, call, *args, **kwargs)
        if isinstance(answer, HttpResponse):
            return answer
        return reply(answer)

    # `manage.py switchboard config` finds routed views by this mark; the action is the view's
    # name (a hook's: `connect`, `disconnect`).
    called.switchboard_action = view.__name__
    return called


switchboard_hook = switchboard_route


def reply(
    data: Any = None, *, join: list[str] = (), leave: list[str] = (), publish: list[tuple] = ()
) -> JsonResponse:
    """The client's reply, with instructions carried out first: leave, join, publish."""
    instructions: dict[str, Any] = {}
    if leave:
        instructions["leave"] = list(leave)
    if join:
        instructions["join"] = list(join)
    if publish:
        instructions["publish"] = [
            {"channel": channel, "data": data_} for channel, data_ in publish
        ]
    # Always the instruction form: a reply that is itself an object of instruction names
    # (`{"join": …}`) must not be taken for instructions.
    instructions["reply"] = data
    return HttpResponse(encode(instructions), content_type="application/json")


def refuse(reason: str, status: int = 403) -> JsonResponse:
    """An error: a route's client gets `backend_error` with `reason`; a connect hook's handshake
    is refused with `status`."""
    return JsonResponse({"reason": reason}, status=status)
