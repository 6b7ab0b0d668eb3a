"""The project's error types, in one place.

A `UserError` is a mistake the user can fix (a config field, a path, a checkpoint): the commands
print its message in one or two lines and exit with status 2. Anything else is a bug.
"""


class UserError(ValueError):
    """A problem in what the user gave us; the message names the field or file and what to do."""


class ConfigError(UserError):
    """A bad config field or input path; the message names the field."""


class ConversionError(UserError):
    """A checkpoint that does not fit its config; the message names the tensor."""


class ModelConfigError(UserError):
    """A checkpoint config that this port cannot represent; the message names the field."""


class ImageError(Exception):
    """An image that cannot be captioned; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
