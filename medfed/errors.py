"""The one error type users see: a single line that says what, where and how to fix."""

from __future__ import annotations


class MedFedError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits with code 2.

    ``MedFedError(what, where=..., fix=...)`` reads ``WHAT (WHERE): FIX``, the form every new
    message uses; a plain message is kept as given.
    """

    def __init__(self, message: str = "", *, where: str | None = None,
                 fix: str | None = None) -> None:
        if where is not None:
            message = f"{message} ({where})"
        if fix is not None:
            message = f"{message}: {fix}"
        super().__init__(one_line(message))


class MedFedWarning(Warning):
    """Something MedFed worked around and the user should know (e.g. a split that could not be
    stratified); the CLI prints it as one ``warning: ...`` line. Not a UserWarning, so that
    silencing libraries' warnings never hides it."""


def warn(message: str, *, where: str | None = None, fix: str | None = None) -> None:
    """Emit a MedFedWarning that reads ``WHAT (WHERE): FIX``, like MedFedError."""
    import warnings

    warnings.warn(MedFedWarning(str(MedFedError(message, where=where, fix=fix))), stacklevel=2)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces (a message is one line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
