"""The one error type users see.

Every problem with user input (a path, an option, a file's contents) is raised as a
:class:`DataonomyError` whose message is one line naming the file or option and what is
wrong. The CLIs print it as ``error: <message>`` and exit with status 2; library callers
catch it like any other exception.
"""

from __future__ import annotations


class DataonomyError(Exception):
    """A user-facing error with a one-line message."""

    def __init__(self, message: str):
        # Keep messages to one line so they read well in logs and terminals.
        super().__init__(" ".join(str(message).split()))


class BadImageError(DataonomyError):
    """An image or mask file that cannot be decoded, is truncated, or has the wrong size."""
