"""Expected errors: the CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class StreamflowError(Exception):
    """An error the user can act on (bad input, a service not reachable, ...)."""

    exit_code = 1


class DataValidationError(StreamflowError):
    """A snapshot file that does not match the table registry.

    The message names the file, the line and the column.
    """

    exit_code = 3

    def __init__(self, message: str, problems: Sequence[object] | None = None):
        super().__init__(message)
        self.problems: list[object] = list(problems or [])
        """The problems found (``streamflow.batch.validate.Problem``: file, line, column, what; each
        prints as one line); the message shows the first of them."""


class ServiceUnavailable(StreamflowError):
    """PostgreSQL or Kafka cannot be reached."""

    exit_code = 4


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name
    when it has none: what a one-line error message quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class AuthenticationFailed(StreamflowError):
    """A service refused our credentials: a setting to fix, retrying does not help."""

    exit_code = 2
