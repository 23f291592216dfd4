"""Expected errors: the CLI prints their message and exits non-zero, without a traceback."""


class StreamflowError(Exception):
    """An error the user can act on (bad input, a service not reachable, ...)."""

    exit_code = 1


class DataValidationError(StreamflowError):
    """A snapshot file that does not match the table registry.

    The message names the file, the line and the column.
    """

    exit_code = 3


class ServiceUnavailable(StreamflowError):
    """PostgreSQL or Kafka cannot be reached."""

    exit_code = 4
