"""Command-line options shared by `streamflow lag` and `streamflow lag rewind`."""

from __future__ import annotations

import argparse

from streamflow import config


def add_group_and_topics(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--group`` (default: the consumer's group) and repeatable ``--topic`` (default: the table
    topics); ``verb`` says what is done to a topic ("report", "rewind")."""
    parser.add_argument(
        "--group", default=config.settings().consumer.group, help="consumer group (default: %(default)s)"
    )
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="TOPIC",
        help=f"topic to {verb} (repeatable; default: the table topics)",
    )
