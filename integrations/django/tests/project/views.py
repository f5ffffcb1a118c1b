"""The project's realtime views: a route, the connect and disconnect hooks, and the channels
a user may join (`SWITCHBOARD["CHANNELS"]`)."""

from switchboard_django.routes import refuse, reply, switchboard_hook, switchboard_route

DISCONNECTED = []


def channels(user, request):
    return [f"inbox:{user.pk}"]


@switchboard_route
def send_message(request, call):
    room = call.body.get("room")
    if not isinstance(room, str) or not isinstance(call.body.get("text"), str):
        return refuse("room and text are required", status=400)
    message = {"user": request.user.username, "text": call.body["text"]}
    return reply({"sent": True}, join=[f"room:{room}"], publish=[(f"room:{room}", message)])


@switchboard_hook
def connect(request, call):
    if not request.user.is_authenticated:
        return refuse("log in first", status=403)
    return reply(join=[f"inbox:{request.user.pk}"])


@switchboard_hook
def disconnect(request, call):
    DISCONNECTED.append((request.user.username, call.body.get("code")))
    return reply()
