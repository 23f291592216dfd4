"""Sample a consumer group's lag: per partition in messages and in seconds, with its owner.

For every partition of the group's topics (by default the table topics of the registry):

* ``committed_offset`` -- the group's committed offset (``None`` if it never committed one);
* ``log_start_offset`` / ``log_end_offset`` -- the partition's earliest and next offset;
* ``lag`` -- messages not yet consumed: ``end - committed``, or ``end - start`` when the group
  never committed (the consumer starts at the earliest offset, ``auto_offset_reset="earliest"``);
  never negative;
* ``lag_seconds`` -- how long the oldest unconsumed event has been waiting: now minus the
  *record timestamp* (produce time) of the record at the committed offset, 0 when caught up.
  The produce time is when the event became pending; the event time (payload and header
  ``event_timestamp``) of a replayed snapshot can be months old and says nothing about the
  consumer, so it is reported separately (``oldest_event_time``, ``event_lag_seconds``);
* the member that owns the partition (``consumer_id``, ``client_id``, ``host``) from the group's
  member assignments, ``None`` when nobody owns it (the group is empty or rebalancing).

The record at the committed offset is read by :mod:`streamflow.lag.records`: one Fetch request
per partition leader (leaders from the sample's topic description), decoding only the batch that
holds the offset and only up to that record (nothing is committed, no group is joined). Both
clients (the admin client and the bare network client that sends the Fetch) come from
:mod:`streamflow.kafka_clients`, are created on the first sample that needs them and reused by the
following ones. When any call of a client fails -- whatever kafka-python raises, not only
:class:`~kafka.errors.KafkaError` -- both clients are closed and dropped, so the next sample builds
fresh ones, and the sample raises :class:`~streamflow.errors.ServiceUnavailable` with a message
starting "Kafka unreachable at <bootstrap servers>" that names the operation. A partition whose
record could not be read within ``read_timeout`` (a leader moving, a broker away for a moment) is
left out of the lag in seconds and logged with the reason. If the committed offset is below the log
start (retention deleted the records) the oldest record that still exists is read instead; if the
offset holds no record (a compacted-away record or a transaction marker) the first record after it
is used.

Offsets are read in the order ``kafka-consumer-groups.sh`` reads them: committed offsets first,
then log-end offsets, so a sample never shows a committed offset above the log end because of a
race with the consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError
from kafka.net import KafkaNetClient

from streamflow import config, kafka_clients, schema, timefmt
from streamflow.errors import AuthenticationFailed, ServiceUnavailable
from streamflow.lag.marks import marks_group, parse_mark
from streamflow.lag.records import RecordReader

log = logging.getLogger(__name__)

DEFAULT_GROUP = config.DEFAULT_CONSUMER_GROUP


def _iso(ts: datetime | None) -> str | None:
    return timefmt.iso_utc(ts) if ts is not None else None


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int | None
    """The group's committed offset; None if it never committed one for this partition."""
    log_start_offset: int
    log_end_offset: int
    lag: int
    """Messages not yet consumed (end - committed, or end - start when never committed)."""
    lag_seconds: float | None
    """Age of the oldest unconsumed event by its produce time (record timestamp); 0 when caught
    up; None when lag > 0 but its record could not be read within the timeout."""
    oldest_produced_at: datetime | None = None
    """Record timestamp of the oldest unconsumed record (None when caught up)."""
    oldest_event_time: datetime | None = None
    """Event time (header / payload ``event_timestamp``) of the oldest unconsumed record."""
    event_lag_seconds: float | None = None
    """now - oldest_event_time: how old the pending event's *data* is (0 when caught up)."""
    oldest_offset: int | None = None
    """Offset of the record that lag_seconds was measured on."""
    commit_metadata: str | None = None
    """Metadata of the committed offset (``streamflow lag`` shows the replay mark of a reset)."""
    replay_id: str | None = None
    """The replay that sent the oldest unconsumed event (its ``streamflow_replay`` header)."""
    replay_marked_at: float | None = None
    """Unix time at which ``streamflow rewind`` last reset this partition (None: never)."""
    consumer_id: str | None = None
    """member_id of the group member that owns the partition; None when nobody does."""
    client_id: str | None = None
    host: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def position(self) -> int:
        """Where the group resumes: the committed offset, or the log start if it never committed."""
        return self.committed_offset if self.committed_offset is not None else self.log_start_offset

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed_offset": self.committed_offset,
            "log_start_offset": self.log_start_offset,
            "log_end_offset": self.log_end_offset,
            "lag": self.lag,
            "lag_seconds": _round(self.lag_seconds),
            "oldest_offset": self.oldest_offset,
            "oldest_produced_at": _iso(self.oldest_produced_at),
            "oldest_event_time": _iso(self.oldest_event_time),
            "event_lag_seconds": _round(self.event_lag_seconds),
            "replay_id": self.replay_id,
            "rewound_at": _iso(
                datetime.fromtimestamp(self.replay_marked_at, tz=timezone.utc)
                if self.replay_marked_at is not None
                else None
            ),
            "consumer_id": self.consumer_id,
            "client_id": self.client_id,
            "host": self.host,
        }


def _max_seconds(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass
class TopicLag:
    topic: str
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_seconds(self) -> float | None:
        """The oldest unconsumed event of the topic (max over partitions); 0 when caught up."""
        if self.lag == 0:
            return 0.0
        return _max_seconds([p.lag_seconds for p in self.partitions if p.lag > 0])

    @property
    def log_end_offset(self) -> int:
        return sum(p.log_end_offset for p in self.partitions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "lag": self.lag,
            "lag_seconds": _round(self.lag_seconds),
            "partitions": [p.to_dict() for p in self.partitions],
        }


@dataclass
class GroupLag:
    group: str
    state: str
    """Group state from DescribeGroups: Stable, PreparingRebalance, Empty, Dead (never existed), ..."""
    sampled_at: datetime
    topics: list[TopicLag]
    missing_topics: list[str] = field(default_factory=list)
    """Requested topics that do not exist on the broker."""
    members: int = 0

    @property
    def partitions(self) -> Iterator[PartitionLag]:
        for t in self.topics:
            yield from t.partitions

    def partition(self, topic: str, partition: int) -> PartitionLag:
        for p in self.partitions:
            if p.topic == topic and p.partition == partition:
                return p
        raise KeyError(f"no partition {topic}[{partition}] in the sample of group {self.group}")

    def topic(self, name: str) -> TopicLag:
        for t in self.topics:
            if t.topic == name:
                return t
        raise KeyError(f"no topic {name} in the sample of group {self.group}")

    @property
    def lag(self) -> int:
        return sum(t.lag for t in self.topics)

    @property
    def lag_seconds(self) -> float | None:
        if self.lag == 0:
            return 0.0
        return _max_seconds([t.lag_seconds for t in self.topics if t.lag > 0])

    @property
    def timestamp(self) -> float:
        """sampled_at as Unix seconds."""
        return self.sampled_at.timestamp()

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "sampled_at": _iso(self.sampled_at),
            "lag": self.lag,
            "lag_seconds": _round(self.lag_seconds),
            "topics": [t.to_dict() for t in self.topics],
            "missing_topics": list(self.missing_topics),
        }


def _header(headers: Any, wanted: str) -> str | None:
    for name, value in headers or ():
        if name == wanted and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def _header_time(headers: Any) -> str | None:
    return _header(headers, schema.EVENT_TIME_HEADER)


def event_time_of(record: Any) -> datetime | None:
    """Event time of a record: the ``event_timestamp`` header, else the payload field; None if absent
    or unreadable (an invalid event is the consumer's business, not the monitor's)."""
    raw = _header_time(getattr(record, "headers", None))
    if raw is None and record.value:
        try:
            payload = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get(schema.EVENT_TIME), str):
            raw = payload[schema.EVENT_TIME]
    if raw is None:
        return None
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, without the repetitions kafka-python puts in."""
    text = str(exc)
    if isinstance(exc, ServiceUnavailable) and "is not reachable" in text:
        # kafka_clients' "Kafka at X is not reachable (Type: message)": keep only the cause.
        text = text.split("is not reachable", 1)[1].strip(" :")
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
    else:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    name, sep, rest = text.partition(": ")
    if sep and rest.startswith(name):  # "KafkaTimeoutError: KafkaTimeoutError: Unable to ..."
        text = rest
    return text


_COORDINATOR_NOT_READY = (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError)

UNREACHABLE = "Kafka unreachable"
"""How every message of a failed sample starts (the CLI and the API show it as it is)."""


class LagMonitor:
    """Samples the lag of one consumer group on a set of topics.

    ``bootstrap`` defaults to ``KAFKA_BOOTSTRAP_SERVERS``; ``topics`` to the table topics of the
    registry. ``timeout`` bounds connecting and each admin request (seconds); ``read_timeout``
    bounds reading the oldest unconsumed records of one sample. A failing Kafka call is raised as
    :class:`~streamflow.errors.ServiceUnavailable` ("Kafka unreachable at ...: <operation> failed
    (...)") after the clients were closed and dropped: the next ``sample`` reconnects from
    scratch. Use as a context manager or call ``close``. Not thread-safe: sample from one thread
    at a time (:class:`~streamflow.lag.sampler.LagSampler` holds a lock around it).
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        group: str = DEFAULT_GROUP,
        topics: list[str] | None = None,
        *,
        timeout: float = 10.0,
        read_timeout: float = 3.0,
    ):
        self.bootstrap = bootstrap or config.kafka_bootstrap()
        self.group = group
        if topics is None:
            from streamflow.topics import table_topics

            topics = table_topics()
        self.topics = list(topics)
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._admin: KafkaAdminClient | None = None
        self._marks: dict[TopicPartition, float] = {}
        self._fetch: KafkaNetClient | None = None
        self._leaders: dict[TopicPartition, int | None] = {}

    # -- clients --------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> ServiceUnavailable:
        """Close and drop both clients (a failed client may be half-broken: a fresh one is built by
        the next sample) and say what failed."""
        self.close()
        return ServiceUnavailable(f"{UNREACHABLE} at {self.bootstrap}: {what} failed ({_describe(exc)})")

    def _settings(self) -> kafka_clients.KafkaSettings:
        return kafka_clients.settings(self.bootstrap)

    def _connect(self, what: str, build):
        """``build(settings, timeout_ms)``: a client, or the monitor's outage error (refused
        credentials are no outage: raised as they are)."""
        s = self._settings()  # outside the guard: a malformed setting is a configuration error
        try:
            return build(s, int(self.timeout * 1000))
        except AuthenticationFailed:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever kafka-python raises is an outage here
            raise self._failed(what, exc) from None

    @property
    def admin(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = self._connect(
                "connecting the admin client",
                lambda s, ms: kafka_clients.admin(
                    "lag-monitor", kafka=s, request_timeout_ms=ms, bootstrap_timeout_ms=ms
                ),
            )
        return self._admin

    @property
    def fetch_client(self) -> KafkaNetClient:
        """The network client that sends the Fetch requests of :meth:`read_records`."""
        if self._fetch is None:
            self._fetch = self._connect(
                "connecting the reader",
                lambda s, ms: kafka_clients.fetch_client(
                    "lag-reader", kafka=s, request_timeout_ms=max(ms, 1000), bootstrap_timeout_ms=ms
                ),
            )
        return self._fetch

    def call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``: one call of a client of this monitor (``streamflow.lag.rewind``
        uses it too); any failure drops the clients and is raised as the monitor's outage error."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - KafkaError, but also OSError, AssertionError, ...
            raise self._failed(what, exc) from None

    def _coordinator_call(self, what: str, fn, *args):
        """A call answered by the group coordinator. On a broker that just started, the coordinator
        is not ready until the offsets topic exists (CoordinatorNotAvailable, CoordinatorLoadIn-
        Progress, NotCoordinator: retriable): asked again until ``timeout``, then an outage."""
        deadline = time.monotonic() + self.timeout
        delay = 0.1
        while True:
            try:
                return fn(*args)
            except _COORDINATOR_NOT_READY as exc:
                if time.monotonic() + delay > deadline:
                    raise self._failed(what, exc) from None
                log.debug("%s: %s; asking again", what, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:  # noqa: BLE001 - KafkaError, but also OSError, AssertionError, ...
                raise self._failed(what, exc) from None

    def close(self) -> None:
        fetch, admin = self._fetch, self._admin
        self._fetch = None
        self._admin = None
        self._leaders = {}
        for client in (fetch, admin):
            kafka_clients.close_quietly(client, timeout=5)

    def __enter__(self) -> LagMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one sample ----------------------------------------------------------------------------

    def _partitions(self) -> tuple[list[TopicPartition], list[str]]:
        admin = self.admin
        described = self.call("describing topics", admin.describe_topics, self.topics)
        found: dict[str, list[int]] = {}
        self._leaders = {}
        for t in described:
            if t.get("error_code", 0) == 0 and t.get("partitions"):
                found[t["name"]] = sorted(p["partition_index"] for p in t["partitions"])
                self._note_leaders(t)
        tps = [TopicPartition(topic, p) for topic in self.topics if topic in found for p in found[topic]]
        return tps, [topic for topic in self.topics if topic not in found]

    def _note_leaders(self, described_topic: dict) -> None:
        for p in described_topic.get("partitions") or ():
            leader = p.get("leader_id")
            tp = TopicPartition(described_topic["name"], p["partition_index"])
            self._leaders[tp] = leader if isinstance(leader, int) and leader >= 0 else None

    def _leaders_of(self, tps: list[TopicPartition], refresh: bool) -> dict[TopicPartition, int | None]:
        """The leader of each partition: from the sample's topic description, described again when
        ``refresh`` (a fetch found a leader moved or away) or when a partition is not in it."""
        if refresh or any(tp not in self._leaders for tp in tps):
            topics = sorted({tp.topic for tp in tps})
            described = self.call("describing topics", self.admin.describe_topics, topics)
            self._leaders = {tp: node for tp, node in self._leaders.items() if tp.topic not in topics}
            for t in described:
                if t.get("error_code", 0) == 0:
                    self._note_leaders(t)
        return {tp: self._leaders.get(tp) for tp in tps}

    def _log_offsets(self, what: str, tps: list[TopicPartition], spec) -> dict[TopicPartition, int]:
        listed = self.call(what, self.admin.list_partition_offsets, {tp: spec for tp in tps})
        return {tp: o.offset for tp, o in listed.items()}

    def _log_starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return self._log_offsets("reading the log-start offsets", tps, OffsetSpec.EARLIEST)

    def _owners(self) -> tuple[str, int, dict[TopicPartition, Owner]]:
        admin = self.admin
        described = self._coordinator_call(
            f"describing group {self.group}", admin.describe_groups, [self.group]
        ).get(self.group)
        if not described:
            return "Dead", 0, {}
        if described.get("error"):
            # A group that never existed (or was deleted) answers GroupIdNotFound with state Dead.
            if "GroupIdNotFound" not in described["error"]:
                log.warning("describing group %s: %s", self.group, described["error"])
            return described.get("group_state") or "Dead", 0, {}
        members = described.get("members") or []
        return described.get("group_state") or "Unknown", len(members), _owners_of(members)

    def _offsets(self, tps: list[TopicPartition]):
        admin = self.admin
        groups = {self.group: tps, marks_group(self.group): tps}
        listed = self._coordinator_call(
            f"reading the committed offsets of group {self.group}", admin.list_group_offsets, groups
        )
        committed = listed.get(self.group, {})
        self._marks = {
            tp: t
            for tp, om in listed.get(marks_group(self.group), {}).items()
            if (t := parse_mark(getattr(om, "metadata", None))) is not None
        }
        start = self._log_starts(tps)
        end = self._log_offsets("reading the log-end offsets", tps, OffsetSpec.LATEST)
        return committed, start, end

    def read_records(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        """The first record at or after each offset, as :class:`kafka.consumer.fetcher.ConsumerRecord`
        (partitions without one within the read timeout are left out and logged). One Fetch per
        partition leader (:class:`~streamflow.lag.records.RecordReader`): no group, no commits."""
        if not positions:
            return {}
        reader = RecordReader(
            self.fetch_client,
            self._leaders_of,
            self._log_starts,
            max_batch_bytes=self._settings().message_max_bytes,
        )
        try:
            found, missing = reader.read(positions, self.read_timeout)
        except ServiceUnavailable:
            raise  # a leader look-up failed: the clients are dropped already
        except Exception as exc:  # noqa: BLE001 - whatever the read raises: drop the clients, report it
            raise self._failed("reading the oldest unconsumed records", exc) from None
        if missing:
            _log_unread(missing, self.read_timeout)
        return found

    def sample(self) -> GroupLag:
        """One sample of the group's lag on its topics (see the module docstring)."""
        tps, missing = self._partitions()
        committed: dict = {}
        start: dict = {}
        end: dict = {}
        if tps:
            committed, start, end = self._offsets(tps)
        state, members, owners = self._owners()
        rows = [_partition_row(tp, committed.get(tp), start[tp], end[tp], owners, self._marks) for tp in tps]
        # Below the log start the records are gone: the oldest pending one is the first left.
        to_read = {
            TopicPartition(r.topic, r.partition): max(r.position, r.log_start_offset)
            for r in rows
            if r.lag > 0
        }
        records = self.read_records(to_read)
        now = time.time()
        for row in rows:
            rec = records.get(TopicPartition(row.topic, row.partition))
            if rec is not None:
                _note_oldest(row, rec, now)
        by_topic: dict[str, list[PartitionLag]] = {}
        for row in rows:
            by_topic.setdefault(row.topic, []).append(row)
        return GroupLag(
            group=self.group,
            state=state,
            sampled_at=datetime.fromtimestamp(now, tz=timezone.utc),
            topics=[TopicLag(topic, by_topic[topic]) for topic in self.topics if topic in by_topic],
            missing_topics=missing,
            members=members,
        )


def _log_unread(missing: dict[TopicPartition, str], timeout: float) -> None:
    by_reason: dict[str, list[str]] = {}
    for tp, reason in missing.items():
        by_reason.setdefault(reason, []).append(f"{tp.topic}[{tp.partition}]")
    log.warning(
        "could not read the oldest unconsumed record of %d partition(s) within %.1f s "
        "(their lag in seconds is unknown): %s",
        len(missing),
        timeout,
        "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()),
    )


Owner = tuple["str | None", "str | None", "str | None"]
"""A partition's owner in the group: member id, client id, host."""


def _owners_of(members: list[dict]) -> dict[TopicPartition, Owner]:
    """Who owns each partition, from a group description's members."""
    owners: dict[TopicPartition, Owner] = {}
    for m in members:
        assignment = m.get("member_assignment")
        if not isinstance(assignment, dict):
            continue
        host = (m.get("client_host") or "").lstrip("/") or None
        for a in assignment.get("assigned_partitions") or []:
            for p in a.get("partitions") or []:
                owners[TopicPartition(a["topic"], p)] = (m.get("member_id"), m.get("client_id"), host)
    return owners


def _partition_row(
    tp: TopicPartition,
    committed: Any,
    log_start: int,
    log_end: int,
    owners: dict[TopicPartition, Owner],
    marks: dict[TopicPartition, float],
) -> PartitionLag:
    """A partition's lag in messages (its lag in seconds 0 when it has none, else unknown until its
    oldest unconsumed record is read); ``committed``: its committed offset and metadata, if any."""
    c_off = (
        committed.offset
        if committed is not None and committed.offset is not None and committed.offset >= 0
        else None
    )
    lag = max(0, log_end - (c_off if c_off is not None else log_start))
    owner = owners.get(tp, (None, None, None))
    return PartitionLag(
        topic=tp.topic,
        partition=tp.partition,
        committed_offset=c_off,
        log_start_offset=log_start,
        log_end_offset=log_end,
        lag=lag,
        lag_seconds=0.0 if lag == 0 else None,
        event_lag_seconds=0.0 if lag == 0 else None,
        consumer_id=owner[0],
        client_id=owner[1],
        host=owner[2],
        commit_metadata=(getattr(committed, "metadata", None) or None) if c_off is not None else None,
        replay_marked_at=marks.get(tp),
    )


def _note_oldest(row: PartitionLag, rec: Any, now: float) -> None:
    """Fill a lagging partition's row from its oldest unconsumed record: its offset, when it was
    produced, its event time and replay, and the lags in seconds they give."""
    row.oldest_offset = rec.offset
    if rec.timestamp is not None and rec.timestamp >= 0:
        row.oldest_produced_at = datetime.fromtimestamp(rec.timestamp / 1000, tz=timezone.utc)
        row.lag_seconds = max(0.0, now - rec.timestamp / 1000)
    row.oldest_event_time = event_time_of(rec)
    row.replay_id = _header(getattr(rec, "headers", None), schema.REPLAY_HEADER)
    if row.oldest_event_time is not None:
        row.event_lag_seconds = max(0.0, now - row.oldest_event_time.timestamp())
