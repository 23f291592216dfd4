"""Shared fixtures. Tests run against the real PostgreSQL and Kafka that `scripts/services.sh up`
starts (the README's test command does that first). They use their own database
(`streamflow_test`) and their own topic prefix, so they never touch the demo's data."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

os.environ.setdefault("POSTGRES_DB", "streamflow_test")
os.environ["POSTGRES_DB"] = os.environ.get("STREAMFLOW_TEST_DB", "streamflow_test")
os.environ.setdefault("STREAMFLOW_TOPIC_PREFIX", f"test{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FEAST_PROJECT", "streamflow_test")

import psycopg  # noqa: E402
import pytest  # noqa: E402

from streamflow import config, warehouse  # noqa: E402


@pytest.fixture(scope="session")
def pg_settings() -> config.Postgres:
    settings = config.postgres()
    try:
        warehouse.ensure_database(settings)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {settings.describe()} ({exc}); "
            "start it with: scripts/services.sh up",
            pytrace=False,
        )
    return settings


@pytest.fixture()
def pg_conn(pg_settings):
    conn = psycopg.connect(pg_settings.conninfo, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from streamflow import kafka_clients
    from streamflow.errors import ServiceUnavailable

    servers = config.kafka_bootstrap()
    try:
        kafka_clients.admin("test", request_timeout_ms=10_000).close()
    except ServiceUnavailable as exc:
        pytest.fail(
            f"Kafka is not reachable at {servers} ({exc}); start it with: scripts/services.sh up",
            pytrace=False,
        )
    return servers


@pytest.fixture()
def fresh(monkeypatch, pg_settings, kafka_bootstrap):
    """Fresh topics (their own prefix, deleted afterwards) and empty stores for one pipeline test;
    returns a consumer group name of its own."""
    from streamflow.kafka_topics import ensure_topics
    from streamflow.topics import dead_letter_topic, table_topics
    from tests import pipeline

    prefix = pipeline.fresh_prefix()
    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
    pipeline.reset_store()
    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    yield f"{prefix}-group"
    pipeline.delete_topics(prefix)


UNIT_FILES = {
    line.strip()
    for line in (Path(__file__).parent / "unit_tests.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
"""The test files that need no service (tests/unit_tests.txt)."""


def pytest_collection_modifyitems(items):
    """Mark every test ``unit`` or ``integration`` by its file (``pytest -m unit``: no services)."""
    root = Path(__file__).parent.parent
    for item in items:
        relative = Path(str(item.fspath)).resolve().relative_to(root).as_posix()
        item.add_marker(pytest.mark.unit if relative in UNIT_FILES else pytest.mark.integration)
