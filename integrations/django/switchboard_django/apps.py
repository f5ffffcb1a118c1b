"""The app: registers the system checks and the session receivers when Django starts."""

from django.apps import AppConfig


class SwitchboardConfig(AppConfig):
    name = "switchboard_django"
    label = "switchboard"
    verbose_name = "Switchboard"

    def ready(self):
        from . import checks, signals  # noqa: F401  (registering is importing)
