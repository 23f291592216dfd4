"""The dead-letter topic: where every invalid event goes, with its reason and its source."""

from __future__ import annotations

import base64
import logging

import orjson
from kafka import KafkaProducer

from streamflow import config
from streamflow.kafka_topics import dead_letter_topic

log = logging.getLogger("consumer.dead_letter")

MAX_PAYLOAD_COPY = 64 * 1024
"""Bytes of the original value copied into the dead-letter record (the rest is cut)."""


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
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
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
    def __init__(self, bootstrap: str | None = None, topic: str | None = None):
        self.topic = topic or dead_letter_topic()
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap or config.kafka_bootstrap(),
            client_id="streamflow-dead-letter",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=2 * 1024 * 1024,
        )
        self.pending: list = []

    def send(self, record, reason: str, field: str | None = None) -> None:
        headers = [
            ("dlq_reason", reason.encode()[:1000]),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        self.pending.append(
            self.producer.send(self.topic, key=record.key, value=dead_letter_value(record, reason, field),
                               headers=headers)
        )

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every dead-letter record is acknowledged (before offsets are committed)."""
        if not self.pending:
            return
        self.producer.flush(timeout=timeout)
        failed = [f for f in self.pending if not f.succeeded()]
        self.pending = []
        if failed:
            raise DeadLetterError(f"{len(failed)} dead-letter records were not acknowledged: {failed[0].exception}")

    def close(self) -> None:
        self.producer.close(timeout=10)
