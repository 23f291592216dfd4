"""Reading the dead-letter topic: every dead letter, a selection of them, or one by its id.

Reads go through one group-less reader (:func:`streamflow.kafka_clients.reader`: no group, nothing
committed), from the start of each partition or from a time (``offsets_for_times``) up to the end
offsets taken before the first poll: what arrives meanwhile is left for the next command.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from streamflow import kafka_clients, schema, timefmt
from streamflow.dead_letters import REDRIVE_HEADER
from streamflow.errors import StreamflowError
from streamflow.topics import topic_of

log = logging.getLogger(__name__)

STALL_SECONDS = 30.0
"""Seconds a read may go without receiving anything while records are still due before it fails."""


iso = timefmt.iso_ms
"""Epoch milliseconds as ISO 8601 UTC with a Z, to the millisecond."""


def iso_time(stamp: datetime | None) -> str | None:
    return None if stamp is None else iso(stamp.timestamp() * 1000)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time (no zone means UTC) or a duration back from now: 90s, 30m, 2h, 7d, 1w."""
    now = now or datetime.now(timezone.utc)
    match = _DURATION.match(value)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        raise StreamflowError(
            f"--since {value!r}: expected an ISO 8601 time (2024-01-31T12:00:00Z) "
            f"or a duration (90s, 30m, 2h, 7d, 1w)"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def parse_id(value: str) -> tuple[int, int]:
    """A dead letter's id, ``partition:offset``."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
    if not match:
        raise StreamflowError(f"dead letter {value!r}: expected an id PARTITION:OFFSET, like 0:17")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, with its value decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    """The dead-letter record's key: the original key (its first 1 KiB)."""
    headers: tuple[tuple[str, bytes], ...]
    doc: dict[str, Any]
    """The value: reason, field, source, key, value or value_base64, headers, ... (empty if unreadable)."""
    readable: bool = True

    @classmethod
    def from_record(cls, rec) -> DeadLetter:
        try:
            doc = orjson.loads(rec.value)
            readable = isinstance(doc, dict)
        except (orjson.JSONDecodeError, TypeError):
            doc, readable = {}, False
        headers = tuple((name, value) for name, value in rec.headers or ())
        return cls(
            rec.topic,
            rec.partition,
            rec.offset,
            rec.timestamp,
            rec.key,
            headers,
            doc if readable else {},
            readable,
        )

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def ref(self) -> str:
        """The id across topics, as the ``redrive_of`` header carries it."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def reason(self) -> str:
        return str(self.doc.get("reason")) if self.readable else "(unreadable dead letter: not a JSON object)"

    @property
    def source(self) -> dict[str, Any]:
        return self.doc.get("source") or {}

    @property
    def source_topic(self) -> str | None:
        return self.source.get("topic")

    @property
    def redrive_of(self) -> str | None:
        return self.doc.get(REDRIVE_HEADER)

    def original_key(self) -> bytes | None:
        return self.key

    def original_value(self) -> bytes | None:
        if self.doc.get("value_bytes") is None:
            return None  # a tombstone
        if "value" in self.doc:
            return str(self.doc["value"]).encode("utf-8")
        return base64.b64decode(self.doc.get("value_base64") or "")

    def original_headers(self) -> list[tuple[str, bytes | None]]:
        """The headers the event had (those the dead letter kept), without an older ``redrive_of``."""
        out: list[tuple[str, bytes | None]] = []
        for entry in self.doc.get("headers") or ():
            if entry.get("name") == REDRIVE_HEADER:
                continue
            if "value_base64" in entry:
                out.append((entry["name"], base64.b64decode(entry["value_base64"])))
            else:
                value = entry.get("value")
                out.append((entry["name"], None if value is None else value.encode("utf-8")))
        return out

    def not_redrivable(self) -> str | None:
        """Why this dead letter cannot be sent again as it was (None: it can)."""
        if not self.readable:
            return "unreadable"
        if not self.source_topic:
            return "unreadable"
        if self.doc.get("value_truncated"):
            return "truncated"
        key_bytes = self.doc.get("key_bytes")
        if key_bytes is not None and (self.key is None or len(self.key) != key_bytes):
            return "truncated"
        value = self.original_value()
        if value is not None and len(value) != self.doc.get("value_bytes"):
            return "truncated"
        return None

    def summary(self) -> dict[str, Any]:
        """What ``list --json`` shows of it (no payload)."""
        return {
            "id": self.id,
            "time": iso(self.timestamp_ms),
            "reason": self.reason,
            "field": self.doc.get("field"),
            "source": {
                "topic": self.source_topic,
                "partition": self.source.get("partition"),
                "offset": self.source.get("offset"),
                "time": iso(self.source.get("timestamp_ms")),
            },
            "key": self.doc.get("key"),
            "value_bytes": self.doc.get("value_bytes"),
            "value_truncated": bool(self.doc.get("value_truncated")),
            REDRIVE_HEADER: self.redrive_of,
        }


@dataclass(frozen=True)
class Selection:
    """The filters of ``list`` and ``redrive``."""

    reason: str | None = None
    """A substring of the reason (case-insensitive)."""
    topic: str | None = None
    """The source topic (a table name stands for its topic)."""
    since: datetime | None = None
    """Dead letters written at or after this time."""
    limit: int | None = None
    """At most this many (the oldest first)."""

    @property
    def source_topic(self) -> str | None:
        if self.topic and self.topic in schema.TABLES_BY_NAME:
            return topic_of(schema.table(self.topic))
        return self.topic

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason and self.reason.lower() not in letter.reason.lower():
            return False
        if self.topic and letter.source_topic != self.source_topic:
            return False
        if self.since and letter.timestamp_ms < self.since.timestamp() * 1000:
            return False
        return True


def counts(letters: list[DeadLetter]) -> dict[str, Any]:
    by_reason = Counter(letter.reason for letter in letters)
    return {"by_reason": dict(by_reason.most_common()), "total": len(letters)}


class TopicReader:
    """A group-less reader of whole partitions, up to their end as of the read's start."""

    def __init__(self, role: str = "dead-letters", kafka: kafka_clients.KafkaSettings | None = None):
        self.role = role
        self.kafka = kafka or kafka_clients.settings()
        self._reader: KafkaConsumer | None = None

    @property
    def reader(self) -> KafkaConsumer:
        if self._reader is None:
            self._reader = kafka_clients.reader(self.role, kafka=self.kafka)
        return self._reader

    def failed(self, what: str, exc: BaseException) -> StreamflowError:
        return kafka_clients.unreachable(self.kafka.bootstrap_servers, exc, what)

    def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions; none when it does not exist."""
        try:
            return [TopicPartition(topic, p) for p in sorted(self.reader.partitions_for_topic(topic) or ())]
        except KafkaError as exc:
            raise self.failed(f"reading the partitions of {topic}", exc) from None

    def read(
        self,
        tps: list[TopicPartition],
        since_ms: int | None = None,
        starts: dict[TopicPartition, int] | None = None,
        stop: Callable[[Any], bool] | None = None,
    ) -> Iterator:
        """Every record of the partitions from their start (or from ``since_ms``, or from the offsets
        ``starts``) to their end offsets as of now; ``stop(record)`` true ends a partition there."""
        if not tps:
            return
        reader = self.reader
        timeout_ms = self.kafka.request_timeout_ms
        try:
            ends = reader.end_offsets(tps, timeout_ms=timeout_ms)
            if starts is None:
                starts = reader.beginning_offsets(tps, timeout_ms=timeout_ms)
                if since_ms is not None:
                    found = reader.offsets_for_times({tp: int(since_ms) for tp in tps}, timeout_ms=timeout_ms)
                    starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
            todo = {tp for tp in tps if starts.get(tp, ends[tp]) < ends[tp]}
            if not todo:
                return
            reader.assign(list(todo))
            reader.resume(*todo)  # paused by an earlier read of the same partitions
            for tp in todo:
                reader.seek(tp, starts[tp])
            last_data = time.monotonic()
            while todo:
                batch = reader.poll(timeout_ms=500)
                if batch:
                    last_data = time.monotonic()
                for tp, records in batch.items():
                    if tp not in todo:
                        continue
                    for rec in records:
                        if rec.offset >= ends[tp]:
                            break
                        yield rec
                        if stop is not None and stop(rec):
                            ends[tp] = rec.offset
                            break
                for tp in list(todo):
                    position = kafka_clients.known_position(reader, tp)  # set by the seek above
                    if position is not None and position >= ends[tp]:
                        todo.discard(tp)
                        reader.pause(tp)
                if todo and time.monotonic() - last_data > STALL_SECONDS:
                    raise KafkaStalled(
                        f"nothing received for {STALL_SECONDS:.0f} s while "
                        f"{len(todo)} partitions still hold records"
                    )
        except (KafkaError, KafkaStalled, OSError) as exc:
            self.close()
            raise self.failed(f"reading {tps[0].topic}", exc) from None

    def close(self) -> None:
        reader, self._reader = self._reader, None
        kafka_clients.close_quietly(reader, timeout=5)


class KafkaStalled(Exception):
    """A read that receives nothing although records are due."""


def read_letters(
    topic: str, selection: Selection = Selection(), reader: TopicReader | None = None
) -> tuple[list[DeadLetter], int]:
    """The dead letters of the selection, oldest first (then by id), and how many matched before
    ``limit``. An absent dead-letter topic holds none."""
    own = reader is None
    reader = reader or TopicReader()
    try:
        tps = reader.partitions(topic)
        if not tps:
            log.warning("the dead-letter topic %s does not exist (yet): no dead letters", topic)
            return [], 0
        since_ms = int(selection.since.timestamp() * 1000) if selection.since else None
        letters = [DeadLetter.from_record(rec) for rec in reader.read(tps, since_ms=since_ms)]
    finally:
        if own:
            reader.close()
    chosen = sorted(
        (x for x in letters if selection.matches(x)), key=lambda x: (x.timestamp_ms, x.partition, x.offset)
    )
    matched = len(chosen)
    if selection.limit is not None:
        chosen = chosen[: selection.limit]
    return chosen, matched


def read_letter(topic: str, letter_id: str, reader: TopicReader | None = None) -> DeadLetter:
    """One dead letter by its id; StreamflowError when the topic holds no record there."""
    partition, offset = parse_id(letter_id)
    own = reader is None
    reader = reader or TopicReader()
    try:
        tps = [tp for tp in reader.partitions(topic) if tp.partition == partition]
        unknown = StreamflowError(f"no dead letter {partition}:{offset} in {topic}")
        if not tps:
            raise unknown
        try:
            start = reader.reader.beginning_offsets(tps, timeout_ms=reader.kafka.request_timeout_ms)[tps[0]]
        except KafkaError as exc:
            raise reader.failed(f"reading the offsets of {topic}", exc) from None
        if offset < start:
            raise unknown
        for rec in reader.read(tps, starts={tps[0]: offset}, stop=lambda rec: rec.offset >= offset):
            if rec.offset == offset:
                return DeadLetter.from_record(rec)
        raise unknown
    finally:
        if own:
            reader.close()
