"""`path("realtime/", include("switchboard_django.urls"))`: `whoami/` for `[auth.introspect]`
and `token/` for the JS client's `getToken`."""

from django.urls import path

from . import views

app_name = "switchboard"

urlpatterns = [
    path("whoami/", views.whoami, name="whoami"),
    path("token/", views.token, name="token"),
]
