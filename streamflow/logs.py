"""Logging set-up shared by every command: one readable line per event, to stderr."""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("STREAMFLOW_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Feast and kafka-python are chatty at INFO; their warnings still show.
    for noisy in ("feast", "kafka", "urllib3", "sqlalchemy", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def progress_enabled() -> bool:
    """Progress bars only on a terminal (not in CI logs or pipes)."""
    return sys.stderr.isatty() and os.environ.get("STREAMFLOW_NO_PROGRESS") is None
