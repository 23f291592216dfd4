"""The dead-letter topic: where every invalid event goes, with its reason and its source."""

from __future__ import annotations

import base64
import logging

import orjson
from streamflow import kafka_clients
from streamflow.kafka_topics import dead_letter_topic

log = logging.getLogger("consumer.dead_letter")

MAX_PAYLOAD_COPY = 64 * 1024
"""Bytes of the original value copied into the dead-letter record (the rest is cut)."""
MAX_KEY_COPY = 1024
"""Bytes of the original key copied into the dead-letter record (a key is a user id: short)."""


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
    try:
        doc["value"] = copied.decode("utf-8")
    except UnicodeDecodeError:
        doc["value_base64"] = base64.b64encode(copied).decode()
    return orjson.dumps(doc)


class DeadLetterError(RuntimeError):
    """Dead-letter records that the broker did not acknowledge (the batch is not committed)."""


class DeadLetterQueue:
    def __init__(self, bootstrap: str | None = None, topic: str | None = None,
                 kafka: kafka_clients.KafkaSettings | None = None):
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
        # A huge key would make the dead-letter record too large to send: keep its start only.
        key = record.key[:MAX_KEY_COPY] if record.key is not None else None
        try:
            future = self.producer.send(self.topic, key=key, value=dead_letter_value(record, reason, field),
                                        headers=headers)
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
            raise DeadLetterError(f"{len(failed) + len(unsent)} dead-letter records were not acknowledged: {first}")

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception as exc:  # noqa: BLE001 - records unacknowledged: their batch was not committed
            log.warning("closing the dead-letter producer: %s", exc)
