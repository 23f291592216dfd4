"""Kafka topics of the pipeline: one per table, plus the dead-letter topic."""

from __future__ import annotations

import logging
import os

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamflow import config, schema
from streamflow.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def default_partitions() -> int:
    return int(os.environ.get("STREAMFLOW_PARTITIONS", "4"))


def dead_letter_topic() -> str:
    return f"{config.topic_prefix()}.dead_letter"


def table_topics() -> list[str]:
    return [t.topic for t in schema.TABLES]


def admin_client(bootstrap: str | None = None) -> KafkaAdminClient:
    servers = bootstrap or config.kafka_bootstrap()
    try:
        return KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=15_000, client_id="streamflow-admin")
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka at {servers} is not reachable ({exc})") from None


def ensure_topics(topics: list[str], partitions: int | None = None, bootstrap: str | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    partitions = partitions or default_partitions()
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)])
                created.append(topic)
                log.info("created topic %s with %d partitions", topic, partitions)
            except TopicAlreadyExistsError:
                pass
        if created:
            admin.wait_for_topics(created, timeout_ms=15_000)
        return created
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot create topics on Kafka at {bootstrap or config.kafka_bootstrap()} ({exc})") from None
    finally:
        admin.close()
