"""The one error type users see: a single line that says what, where and how to fix."""


class MedFedError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits with code 2."""
