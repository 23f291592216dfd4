"""The pipeline's topic names: ``<prefix>.<table>`` for each table of the registry and
``<prefix>.dead_letter``, the prefix being ``STREAMFLOW_TOPIC_PREFIX``.

The registry (:mod:`streamflow.schema`) names tables only; the topics come from here, where the
prefix is read, so that the registry stays the same data whatever the deployment. ``prefix``
arguments name the topics under another prefix than the configured one.
"""

from __future__ import annotations

from streamflow import config, schema


def topic_of(table: schema.Table, prefix: str | None = None) -> str:
    """The topic of a table's events."""
    return f"{prefix or config.topic_prefix()}.{table.name}"


def table_topics(prefix: str | None = None) -> list[str]:
    """The topics of every table, in the registry's order."""
    return [topic_of(t, prefix) for t in schema.TABLES]


def dead_letter_topic(prefix: str | None = None) -> str:
    """The topic of the events the consumer could not write, with their reasons."""
    return f"{prefix or config.topic_prefix()}.dead_letter"


_TOPIC_MAPS: dict[str, dict[str, schema.Table]] = {}


def table_of_topic(topic: str, prefix: str | None = None) -> schema.Table | None:
    """The table whose topic this is, or None."""
    prefix = prefix or config.topic_prefix()
    topics = _TOPIC_MAPS.get(prefix)
    if topics is None:
        topics = _TOPIC_MAPS[prefix] = {topic_of(t, prefix): t for t in schema.TABLES}
    return topics.get(topic)
