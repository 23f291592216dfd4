"""The first record at or after an offset, on many partitions at once, decoding only that record.

The lag monitor needs one record per lagging partition (the oldest unconsumed one). A consumer
would decode every record of every batch it fetches; here the Fetch requests are sent directly
(one per partition leader, each partition at its own offset, through the bare network client of
:func:`streamflow.kafka_clients.fetch_client`) and the answer's raw bytes are walked with
kafka-python's :class:`~kafka.record.MemoryRecords`: batches that end below the wanted offset are
skipped on their header, control batches (transaction markers) are skipped, and in the batch that
holds the offset records are decoded only up to the first one at or after it.

Fetch bounds and retries: each partition asks for at most ``bytes_per_partition`` bytes. A broker
returns a batch larger than that whole only for the first partition of a response (KIP-74); the
others come back empty (or, from some servers, cut in the middle of the batch), as do partitions
after the response filled up. Those are fetched again with four times the bound (a cut batch: with
its size, read in its header), up to ``max_batch_bytes``, the largest bounds first in the request.
A partition whose offset is out of range (retention deleted the records) is read from the
log start, like the consumer it replaces (``auto_offset_reset="earliest"``). A partition whose
leader moved or is unknown for a moment (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, a lost
connection, ...) is fetched again after its leaders were looked up afresh. Whatever has no record
by the deadline is left out, with the reason. Isolation is READ_UNCOMMITTED, like the consumer
group's members: records of open or aborted transactions count as pending, markers never do.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import kafka.errors as Errors
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.net import KafkaNetClient
from kafka.protocol.consumer import FetchRequest
from kafka.record import MemoryRecords

from streamflow import kafka_clients

log = logging.getLogger(__name__)

BYTES_PER_PARTITION = kafka_clients.PRODUCER_BATCH_BYTES
"""First fetch bound per partition: a whole batch of our producers fits, so most partitions need
one round; a larger batch is fetched again at its own size. With ~200 lagging partitions a sample
reads at most ~13 MiB."""

MAX_BATCH_BYTES = 1024 * 1024
"""The largest bound a partition is fetched again with when nothing whole came back (the broker's
message.max.bytes, KAFKA_MESSAGE_MAX_BYTES: no batch is larger); bounds grow 4x a round up to it."""

RESPONSE_MAX_BYTES = 32 * 1024 * 1024
"""Bound of one Fetch response (the broker may exceed it by one batch, KIP-74)."""

MAX_WAIT_MS = 100
"""How long a broker may hold a Fetch when it has no data yet (only partitions at the log end)."""

RETRY_BACKOFF = 0.1
"""Seconds between two rounds that made no progress (a leader moving, a broker reconnecting)."""

_FETCH_VERSIONS = {"min_version": 5, "max_version": 12}
"""v5+: the answer carries the log start offset (out-of-range handling); up to v12: topics by name
(v13 wants topic ids), as kafka-python's own Fetcher does."""

_LOG_OVERHEAD = MemoryRecords.LOG_OVERHEAD
"""Bytes before a batch's records that every message format shares: offset (int64), length (int32)."""

_RETRY_WITH_NEW_LEADERS = (
    Errors.InvalidMetadataError,  # NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, ...
    Errors.ReplicaNotAvailableError,
    Errors.KafkaStorageError,
    Errors.FencedLeaderEpochError,
    Errors.UnknownLeaderEpochError,
)


# -- the record-finding step (no I/O) --------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """What one partition's fetched bytes say about a wanted offset."""

    record: ConsumerRecord | None
    """The first record at or after the offset, if the bytes hold it."""
    next_offset: int
    """Where to fetch this partition again when they do not: past the batches that ended below the
    offset or held no record at or after it (control batches, compacted records)."""
    cut_batch_bytes: int | None = None
    """Size of the batch the bytes end in the middle of (the fetch bound cut it), if any."""


def scan(tp: TopicPartition, data: bytes | memoryview | None, offset: int) -> Scan:
    """The first record at or after ``offset`` in a partition's fetched bytes (record batches as the
    broker stores them). Decodes the records of one batch at most, and only up to that record.
    Raises :class:`~kafka.errors.CorruptRecordError` for a batch that fails its checksum."""
    next_offset = offset
    if not data:
        return Scan(None, next_offset)
    records = MemoryRecords(data)
    while (batch := records.next_batch()) is not None:
        if batch.magic >= 2:
            if batch.next_offset <= offset:  # ends below the offset: its header is enough
                continue
            if batch.is_control_batch:  # a transaction marker, no event
                next_offset = max(next_offset, batch.next_offset)
                continue
        if not batch.validate_crc():
            raise Errors.CorruptRecordError(
                f"{_name(tp)}: batch at offset {batch.base_offset} fails its checksum"
            )
        for rec in batch:
            if rec.offset >= offset:
                return Scan(_consumer_record(tp, batch, rec), next_offset)
            next_offset = max(next_offset, rec.offset + 1)
        if batch.magic >= 2:  # v2 keeps the batch's last offset even when compaction removed it
            next_offset = max(next_offset, batch.next_offset)
    tail = len(data) - records.valid_bytes()
    cut = None
    if tail >= _LOG_OVERHEAD:
        view = memoryview(data)[len(data) - tail :]
        (length,) = struct.unpack_from(">i", view, MemoryRecords.LENGTH_OFFSET)
        cut = _LOG_OVERHEAD + length
    return Scan(None, next_offset, cut)


def _consumer_record(tp: TopicPartition, batch, rec) -> ConsumerRecord:
    """The record as a consumer returns it (:class:`kafka.consumer.fetcher.ConsumerRecord`)."""
    headers = rec.headers or []
    return ConsumerRecord(
        tp.topic,
        tp.partition,
        getattr(batch, "leader_epoch", -1),
        rec.offset,
        rec.timestamp,
        rec.timestamp_type,
        rec.key,
        rec.value,
        headers,
        rec.checksum,
        len(rec.key) if rec.key is not None else -1,
        len(rec.value) if rec.value is not None else -1,
        sum(len(k.encode()) + (len(v) if v is not None else 0) for k, v in headers) if headers else -1,
    )


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


# -- fetching ----------------------------------------------------------------------------------


@dataclass
class _Wanted:
    offset: int
    """The record wanted is the first at or after this offset."""
    fetch_offset: int
    """Where the next fetch starts (past batches already known to hold nothing at or after it)."""
    max_bytes: int
    resets: int = 0
    """How many times the offset was out of range and moved to the log start."""


Leaders = Callable[[list[TopicPartition], bool], dict[TopicPartition, int | None]]
"""``leaders(partitions, refresh)``: the broker id leading each partition (None: no leader now);
``refresh`` asks for a fresh look-up instead of the one at hand."""

LogStarts = Callable[[list[TopicPartition]], dict[TopicPartition, int]]
"""``log_starts(partitions)``: the earliest offset of each partition (a ListOffsets EARLIEST)."""

MAX_RESETS = 3
"""Times a partition's offset may be found out of range in one read before it is left out."""


class RecordReader:
    """Reads the first record at or after given offsets through one network client (see the module
    docstring). Not thread-safe: one read at a time."""

    def __init__(
        self,
        client: KafkaNetClient,
        leaders: Leaders,
        log_starts: LogStarts,
        *,
        bytes_per_partition: int = BYTES_PER_PARTITION,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_wait_ms: int = MAX_WAIT_MS,
    ):
        self.client = client
        self.leaders = leaders
        self.log_starts = log_starts
        self.bytes_per_partition = bytes_per_partition
        self.max_batch_bytes = max_batch_bytes
        self.max_wait_ms = max_wait_ms

    def read(
        self, positions: dict[TopicPartition, int], timeout: float
    ) -> tuple[dict[TopicPartition, ConsumerRecord], dict[TopicPartition, str]]:
        """``(found, missing)``: the record of each partition read within ``timeout`` seconds, and for
        each other one why not. Non-retriable broker errors (authorization, ...) are raised."""
        deadline = time.monotonic() + timeout
        wanted = {tp: _Wanted(o, o, self.bytes_per_partition) for tp, o in positions.items()}
        found: dict[TopicPartition, ConsumerRecord] = {}
        why: dict[TopicPartition, str] = {}
        refresh = False
        while wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            progress, refresh = self._round(wanted, found, why, refresh, deadline)
            if wanted and not progress:
                time.sleep(min(RETRY_BACKOFF, max(0.0, deadline - time.monotonic())))
        return found, {tp: why.get(tp, "no answer") for tp in positions if tp not in found}

    def _round(self, wanted, found, why, refresh: bool, deadline: float) -> tuple[bool, bool]:
        """One Fetch per leader for every partition still wanted; returns (progress, refresh leaders)."""
        # the largest bounds first: the first partition of a response gets its batch whole (KIP-74)
        order = sorted(wanted, key=lambda tp: -wanted[tp].max_bytes)
        leaders = self.leaders(order, refresh)
        refresh = False
        by_node: dict[int, list[TopicPartition]] = {}
        for tp in order:
            node = leaders.get(tp)
            if node is None or node < 0:
                why[tp] = "no leader"
                refresh = True
            else:
                by_node.setdefault(node, []).append(tp)
        for node in self._unknown_brokers(by_node, deadline):
            for tp in by_node.pop(node):
                why[tp] = f"broker {node} unknown"
            refresh = True
        futures = {node: self.client.send(node, self._request(tps, wanted)) for node, tps in by_node.items()}
        for future in futures.values():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms > 0 and not future.is_done:
                self.client.poll(timeout_ms=remaining_ms, future=future)
        progress = False
        out_of_range: list[TopicPartition] = []
        for node, future in futures.items():
            if not future.is_done:
                for tp in by_node[node]:
                    why[tp] = f"no answer from broker {node}"
                continue
            if future.failed():
                exc = future.exception
                log.debug("fetch from broker %s failed: %s", node, exc)
                for tp in by_node[node]:
                    why[tp] = f"broker {node}: {type(exc).__name__}"
                refresh = True
                continue
            moved, stale = self._handle(node, future.value, wanted, found, why, out_of_range)
            progress |= moved
            refresh |= stale
        if out_of_range:
            self._from_log_start(out_of_range, wanted, why)
            progress = True
        return progress, refresh

    def _unknown_brokers(self, by_node: dict[int, list[TopicPartition]], deadline: float) -> list[int]:
        """The leaders the client does not know (a broker that joined since it bootstrapped): asks for
        the brokers' metadata once, waits for it until the deadline, returns those still unknown."""
        cluster = self.client.cluster
        if all(cluster.broker_metadata(node) is not None for node in by_node):
            return []
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms > 0:
            self.client.poll(timeout_ms=remaining_ms, future=cluster.request_update())
        return [node for node in by_node if cluster.broker_metadata(node) is None]

    def _request(self, tps: list[TopicPartition], wanted: dict[TopicPartition, _Wanted]) -> FetchRequest:
        topics: dict[str, list] = {}
        for tp in tps:
            w = wanted[tp]
            topics.setdefault(tp.topic, []).append(
                FetchRequest.FetchTopic.FetchPartition(
                    partition=tp.partition,
                    current_leader_epoch=-1,
                    fetch_offset=w.fetch_offset,
                    last_fetched_epoch=-1,
                    log_start_offset=-1,
                    partition_max_bytes=w.max_bytes,
                )
            )
        return FetchRequest(
            max_wait_ms=self.max_wait_ms,
            min_bytes=1,
            max_bytes=RESPONSE_MAX_BYTES,
            isolation_level=0,  # READ_UNCOMMITTED
            session_id=0,  # no fetch session: every partition is named in every request
            session_epoch=-1,
            topics=[FetchRequest.FetchTopic(topic=t, partitions=parts) for t, parts in topics.items()],
            forgotten_topics_data=[],
            rack_id="",
            **_FETCH_VERSIONS,
        )

    def _handle(self, node: int, response, wanted, found, why, out_of_range) -> tuple[bool, bool]:
        """Takes the records of one Fetch response; returns (progress, refresh leaders). Partitions
        whose offset is out of range are added to ``out_of_range``."""
        progress = refresh = False
        top = Errors.for_code(getattr(response, "error_code", 0) or 0)
        if top is not Errors.NoError:
            if not issubclass(top, Errors.RetriableError):
                raise top(f"Fetch from broker {node}")
            for topic in response.responses:
                for part in topic.partitions:
                    why[TopicPartition(topic.topic, part.partition_index)] = f"broker {node}: {top.__name__}"
            return False, True
        for topic in response.responses:
            for part in topic.partitions:
                tp = TopicPartition(topic.topic, part.partition_index)
                w = wanted.get(tp)
                if w is None:
                    continue
                error = Errors.for_code(part.error_code)
                if error is Errors.NoError:
                    progress |= self._take(tp, w, part, wanted, found, why)
                elif error is Errors.OffsetOutOfRangeError:
                    out_of_range.append(tp)
                elif issubclass(error, _RETRY_WITH_NEW_LEADERS) or issubclass(error, Errors.RetriableError):
                    why[tp] = error.__name__
                    refresh |= issubclass(error, _RETRY_WITH_NEW_LEADERS)
                else:
                    raise error(f"Fetch of {_name(tp)} at offset {w.fetch_offset} from broker {node}")
        return progress, refresh

    def _take(self, tp, w: _Wanted, part, wanted, found, why) -> bool:
        try:
            result = scan(tp, part.records, w.offset)
        except Errors.CorruptRecordError as exc:
            log.warning("%s", exc)
            why[tp] = "corrupt record batch"
            del wanted[tp]
            return True
        if result.record is not None:
            found[tp] = result.record
            del wanted[tp]
            return True
        before = w.fetch_offset
        w.fetch_offset = max(before, result.next_offset)
        if w.fetch_offset >= part.high_watermark >= 0:
            # nothing at or after the offset any more (the log was truncated, or ends in a marker)
            why[tp] = f"no record at or after offset {w.offset} (log end {part.high_watermark})"
            del wanted[tp]
            return True
        if w.fetch_offset > before:  # past batches that held no record for us: fetch on from there
            why[tp] = "no record in the fetched bytes"
            return True
        # Nothing at the offset: its batch is larger than the bound (a broker answers such a partition
        # empty unless it comes first in the response) or the response was full. Ask for more bytes.
        grown = result.cut_batch_bytes or min(w.max_bytes * 4, max(self.max_batch_bytes, w.max_bytes))
        why[tp] = f"no whole batch at offset {w.fetch_offset} within {w.max_bytes} bytes"
        if grown <= w.max_bytes:
            return False
        w.max_bytes = grown
        return True

    def _from_log_start(self, tps: list[TopicPartition], wanted, why) -> None:
        """Offsets out of range (retention deleted the records, or beyond the log after a truncation):
        read from the log start, as a consumer with ``auto_offset_reset="earliest"`` would. (An
        OFFSET_OUT_OF_RANGE answer carries no log start: it is asked for.)"""
        starts = self.log_starts(tps)
        for tp in tps:
            w = wanted[tp]
            start = starts.get(tp)
            w.resets += 1
            if start is None or start < 0 or w.resets > MAX_RESETS:
                why[tp] = f"offset {w.fetch_offset} out of range"
                del wanted[tp]
                continue
            log.info(
                "%s: offset %d is out of range; reading from the log start %d",
                _name(tp),
                w.fetch_offset,
                start,
            )
            w.offset = w.fetch_offset = start
