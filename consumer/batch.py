"""A batch of polled records on its way to the database: grouped by table, with the offsets to
commit once it is written."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from kafka import TopicPartition

from streamflow.topics import table_of_topic


@dataclass
class Batch:
    """Records polled and not written yet: per table (in the order read), and the next offset of
    every partition they cover (committed once written)."""

    records: dict[TopicPartition, list]
    tables: dict[str, list]
    next_offsets: dict[TopicPartition, int]

    @classmethod
    def of(cls, records: dict[TopicPartition, list]) -> tuple[Batch, list]:
        """A poll's records as a batch, and those of a topic of no table (not in the batch's tables:
        the caller dead-letters them; their offsets are committed with the batch)."""
        tables: dict[str, list] = defaultdict(list)
        next_offsets: dict[TopicPartition, int] = {}
        unknown: list = []
        for tp, recs in records.items():
            table = table_of_topic(tp.topic)
            (tables[table.name] if table else unknown).extend(recs)
            next_offsets[tp] = recs[-1].offset + 1
        return cls(records, dict(tables), next_offsets), unknown

    @property
    def events(self) -> int:
        return sum(len(recs) for recs in self.records.values())

    def then(self, later: Batch) -> Batch:
        """This batch followed by one polled after it, as one batch (the later's records after this
        one's in each table, so newest-wins sees them in the order they were read)."""
        records = {tp: list(recs) for tp, recs in self.records.items()}
        for tp, recs in later.records.items():
            records.setdefault(tp, []).extend(recs)
        tables = {name: list(recs) for name, recs in self.tables.items()}
        for name, recs in later.tables.items():
            tables.setdefault(name, []).extend(recs)
        offsets = dict(self.next_offsets)
        for tp, offset in later.next_offsets.items():
            offsets[tp] = max(offset, offsets.get(tp, offset))
        return Batch(records, tables, offsets)


def first_offsets(*batches: dict[TopicPartition, list]) -> dict[TopicPartition, int]:
    """The lowest offset per partition of several polls' records (where to read them again)."""
    first: dict[TopicPartition, int] = {}
    for records in batches:
        for tp, recs in records.items():
            first[tp] = min(recs[0].offset, first.get(tp, recs[0].offset))
    return first
