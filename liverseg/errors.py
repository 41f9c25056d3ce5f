"""The one exception type for mistakes a user can fix (bad input, missing files, wrong names).

The command-line layer turns a :class:`LiversegError` into a clear message and a non-zero exit
code without a stack trace; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class LiversegError(Exception):
    """A problem with the user's input or environment, with a message saying what to do."""
