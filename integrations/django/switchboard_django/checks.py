"""Django system checks for `settings.SWITCHBOARD`: each problem is an error naming its key."""

from django.core.checks import Error, register

from . import conf


@register()
def check_settings(app_configs=None, **kwargs):
    return [
        Error(conf.describe(key, message), id="switchboard.E001")
        for key, message in conf.problems()
    ]
