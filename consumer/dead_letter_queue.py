"""The dead-letter topic: where every invalid event goes, with its reason and its source.

A dead letter's value is a JSON object: reason, field, source topic/partition/offset/timestamp, the
key, the original value (text, or base64 when it is no UTF-8; cut at 64 KiB: ``value_truncated``),
the original headers, and ``redrive_of`` when the event was re-driven from an earlier dead letter
(``streamflow dead-letters``, :mod:`streamflow.dead_letters`). Its headers: ``dlq_reason``,
``source`` (and ``redrive_of``). Its key is the original key (cut at 1 KiB).
"""

from __future__ import annotations

import base64
import logging

import orjson

from streamflow import kafka_clients
from streamflow.dead_letters import REDRIVE_HEADER
from streamflow.topics import dead_letter_topic

log = logging.getLogger("consumer.dead_letter_queue")

MAX_PAYLOAD_COPY = 64 * 1024
"""Bytes of the original value copied into the dead-letter record (the rest is cut)."""
MAX_KEY_COPY = 1024
"""Bytes of the original key copied into the dead-letter record (a key is a user id: short)."""
MAX_HEADERS_COPY = 4 * 1024
"""Bytes of the original headers (names and values) copied into the dead-letter record."""


def _text_or_base64(value: bytes) -> dict:
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode()}


def _headers(record) -> tuple[list[dict], bool]:
    """The record's headers, in order, as long as they fit in MAX_HEADERS_COPY (and whether some
    were left out): what a redrive sends again."""
    copied: list[dict] = []
    used = 0
    for name, value in getattr(record, "headers", None) or ():
        used += len(name) + len(value or b"")
        if used > MAX_HEADERS_COPY:
            return copied, True
        copied.append({"name": name, **({"value": None} if value is None else _text_or_base64(value))})
    return copied, False


def _redrive_of(record) -> bytes | None:
    for name, value in getattr(record, "headers", None) or ():
        if name == REDRIVE_HEADER and value:
            return value[:1000]
    return None


def dead_letter_value(record, reason: str, field: str | None) -> bytes:
    value = record.value or b""
    copied = value[:MAX_PAYLOAD_COPY]
    doc = {
        "reason": reason,
        "field": field,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
        },
        "key": record.key[:MAX_KEY_COPY].decode("utf-8", "replace") if record.key is not None else None,
        "key_bytes": len(record.key) if record.key is not None else None,
        "value_bytes": len(value) if record.value is not None else None,
        "value_truncated": len(value) > MAX_PAYLOAD_COPY,
    }
    doc["headers"], doc["headers_truncated"] = _headers(record)
    redrive_of = _redrive_of(record)
    doc[REDRIVE_HEADER] = redrive_of.decode("utf-8", "replace") if redrive_of is not None else None
    doc.update(_text_or_base64(copied))
    return orjson.dumps(doc)


class DeadLetterError(RuntimeError):
    """Dead-letter records that the broker did not acknowledge (the batch is not committed)."""


class DeadLetterQueue:
    def __init__(
        self,
        bootstrap: str | None = None,
        topic: str | None = None,
        kafka: kafka_clients.KafkaSettings | None = None,
    ):
        self.topic = topic or dead_letter_topic()
        self.kafka = kafka or kafka_clients.settings(bootstrap)
        self.producer = kafka_clients.dead_letter_producer(kafka=self.kafka)
        self.pending: list = []
        self.unsent: list[BaseException] = []

    def reset(self) -> None:
        """Replace the producer after a failed flush: a kafka-python producer that had a record
        refused can fail every later send, and the batch is re-read anyway. When no new one can be
        built yet (the broker is away), the old one stays and the next flush tells."""
        try:
            fresh = kafka_clients.dead_letter_producer(kafka=self.kafka)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not replace the dead-letter producer yet: %s", exc)
            return
        kafka_clients.close_quietly(self.producer, 0)
        self.producer = fresh
        self.pending, self.unsent = [], []

    def send(self, record, reason: str, field: str | None = None) -> None:
        headers = [
            ("dlq_reason", reason.encode()[:1000]),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        redrive_of = _redrive_of(record)
        if redrive_of is not None:
            headers.append((REDRIVE_HEADER, redrive_of))
        # A huge key would make the dead-letter record too large to send: keep its start only.
        key = record.key[:MAX_KEY_COPY] if record.key is not None else None
        try:
            future = self.producer.send(
                self.topic, key=key, value=dead_letter_value(record, reason, field), headers=headers
            )
        except Exception as exc:  # noqa: BLE001 - e.g. no metadata within max_block_ms: the broker is away
            self.unsent.append(exc)
            return
        self.pending.append(future)

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every dead-letter record is acknowledged (before offsets are committed).

        Raises DeadLetterError when one was not (the caller re-reads the batch, uncommitted).
        """
        if not self.pending and not self.unsent:
            return
        flush_error = None
        try:
            self.producer.flush(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - not everything acknowledged within the timeout
            flush_error = exc
        failed = [f for f in self.pending if not f.succeeded()]
        unsent = self.unsent
        self.pending, self.unsent = [], []
        if failed or unsent:
            first = unsent[0] if unsent else (failed[0].exception or flush_error)
            raise DeadLetterError(
                f"{len(failed) + len(unsent)} dead-letter records were not acknowledged: {first}"
            )

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception as exc:  # noqa: BLE001 - records unacknowledged: their batch was not committed
            log.warning("closing the dead-letter producer: %s", exc)
