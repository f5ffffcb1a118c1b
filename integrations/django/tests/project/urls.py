from django.contrib.auth.views import LogoutView
from django.urls import include, path

from . import views

urlpatterns = [
    path("realtime/", include("switchboard_django.urls")),
    path("realtime/send_message/", views.send_message),
    path("realtime/connect/", views.connect),
    path("realtime/disconnect/", views.disconnect),
    path("accounts/logout/", LogoutView.as_view(next_page="/")),
]
