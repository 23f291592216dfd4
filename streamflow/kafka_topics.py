"""Kafka topics of the pipeline: one per table, plus the dead-letter topic.

Topics get replication factor min(3, brokers) (or STREAMFLOW_REPLICATION_FACTOR), and
``min.insync.replicas=2`` when they have 3 replicas or more: with the producers' acks=all, an
acknowledged event is then on two nodes at least and survives the loss of one.
"""

from __future__ import annotations

import logging

from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamflow import config, kafka_clients
from streamflow.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def default_partitions() -> int:
    return config.settings().kafka.partitions


def admin_client(bootstrap: str | None = None):
    return kafka_clients.admin("admin", kafka=kafka_clients.settings(bootstrap))


def replication(brokers: int, wanted: int = 0) -> tuple[int, dict[str, str]]:
    """Replication factor and topic configs for a cluster of ``brokers`` nodes."""
    factor = wanted if wanted > 0 else min(3, brokers)
    if factor > brokers:
        raise ServiceUnavailable(
            f"replication factor {factor} needs {factor} brokers; the cluster has {brokers}"
        )
    configs = {"min.insync.replicas": "2"} if factor >= 3 else {}
    return factor, configs


def broker_count(admin) -> int:
    described = admin.describe_cluster()
    return len(described.get("brokers") or []) or 1


def ensure_topics(
    topics: list[str], partitions: int | None = None, bootstrap: str | None = None
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    partitions = partitions or default_partitions()
    settings = kafka_clients.settings(bootstrap)
    admin = kafka_clients.admin("admin", kafka=settings)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        created = []
        if missing:
            factor, configs = replication(broker_count(admin), settings.replication_factor)
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, factor, topic_configs=configs)])
                created.append(topic)
                log.info("created topic %s with %d partitions, %d replicas", topic, partitions, factor)
            except TopicAlreadyExistsError:
                pass
        if created:
            admin.wait_for_topics(created, timeout_ms=15_000)
        return created
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"cannot create topics on Kafka at {settings.bootstrap_servers} ({exc})"
        ) from None
    finally:
        kafka_clients.close_quietly(admin, None)
