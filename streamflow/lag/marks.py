"""Rewind marks: how ``streamflow rewind`` records a deliberate replay, and how the monitor reads it.

A rewind commits, for each partition it moves, the offset it moved to in a group of its own
(:func:`marks_group`), with ``REPLAY_MARK`` and the time in the commit metadata; the monitor reads
those commits back (:func:`parse_mark`) and reports the partitions as REPLAY, not REWIND.
"""

from __future__ import annotations

from datetime import datetime

REPLAY_MARK = "streamflow-replay"
"""How the commit metadata of a rewind mark starts."""


def marks_group(group: str) -> str:
    """The group whose committed offsets record the rewinds of ``group`` (``streamflow rewind``):
    per partition, the offset it was reset to, with the time in the commit metadata. Kept apart
    from the group's own commits, which its consumers overwrite."""
    return f"{group}.rewinds"


def parse_mark(metadata: str | None) -> float | None:
    """Unix time of a rewind mark (``streamflow-replay <ISO time>``), None if it is none."""
    if not metadata or not metadata.startswith(REPLAY_MARK):
        return None
    try:
        return datetime.fromisoformat(metadata[len(REPLAY_MARK) :].strip()).timestamp()
    except ValueError:
        return None
