"""Helpers for tests that run the pipeline against the real broker and database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import psycopg

from streamflow import config, schema, warehouse
from streamflow.batch.validate import read_snapshot
from streamflow.feature_store import apply, get_store

REPO = config.REPO_ROOT


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def reset_store() -> None:
    """Empty warehouse and online tables, then apply the Feast definitions again."""
    from feature_repo import definitions
    from streamflow.feast_stores.online import table_name

    project = os.environ["FEAST_PROJECT"]
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        warehouse.drop_schema(conn)
        for view in definitions.FEATURE_VIEWS.values():
            conn.execute(f'DROP TABLE IF EXISTS "{table_name(project, view)}"')
    apply()


def replay(folders: list[Path], env: dict | None = None) -> None:
    """Replay snapshot folders with the real producer (in-process)."""
    from producer.replay import Replayer, make_producer, prepare_topics

    prepare_topics(partitions=4)
    replayer = Replayer(make_producer())
    stats = replayer.replay(folders)
    replayer.producer.close()
    assert stats.total_failed == 0 and stats.unacknowledged == 0, stats.summary()


def drain(group: str, max_idle: float = 60.0) -> dict[str, float]:
    """Run one consumer in-process until every partition is consumed."""
    from consumer.runner import ConsumerSettings, StreamConsumer
    from streamflow.kafka_topics import dead_letter_topic, ensure_topics, table_topics

    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    consumer = StreamConsumer(ConsumerSettings(group_id=group, until_drained=True, max_idle_seconds=max_idle))
    return consumer.run()


def consumer_process(group: str, *args: str, log_path: Path | None = None) -> subprocess.Popen:
    """Start a consumer as its own process (same environment: topics, database, project)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.main", "--group", group, *args],
        cwd=REPO, env={**os.environ, "STREAMFLOW_LOG_LEVEL": "INFO"}, stdout=out, stderr=out,
    )


def _norm(value):
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.date().isoformat() if hasattr(value, "date") else str(value)
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def expected_online(folder: Path) -> dict[str, dict[str, object]]:
    """user -> {feature: value} of a snapshot folder, every table."""
    frames = read_snapshot(folder)
    state: dict[str, dict[str, object]] = {}
    for table in schema.TABLES:
        for row in frames[table.name].to_dict("records"):
            values = state.setdefault(row[schema.KEY], {})
            for name in table.feature_names:
                values[f"{table.feature_view}:{name}"] = _norm(row[name])
    return state


def online_state(users: list[str]) -> dict[str, dict[str, object]]:
    """user -> {view:feature: value} as the online store answers, every table."""
    refs = [f"{t.feature_view}:{c}" for t in schema.TABLES for c in t.feature_names]
    result = get_store().get_online_features(
        features=refs, entity_rows=[{schema.KEY: u} for u in users], full_feature_names=True
    ).to_dict()
    state = {}
    for i, user in enumerate(result[schema.KEY]):
        state[user] = {ref: _norm(result[ref.replace(":", "__")][i]) for ref in refs}
    return state


def online_event_times(view: str) -> dict[bytes, datetime]:
    from streamflow.feast_stores.online import table_name

    with psycopg.connect(config.postgres().conninfo) as conn:
        rows = conn.execute(f'SELECT entity_key, event_ts FROM "{table_name(os.environ["FEAST_PROJECT"], view)}"').fetchall()
    return {bytes(k): ts for k, ts in rows}


def offline_rows(table: schema.Table) -> pd.DataFrame:
    with psycopg.connect(config.postgres().conninfo) as conn:
        cur = conn.execute(f"SELECT * FROM {table.snapshot_table} ORDER BY user_id, as_of")
        cols = [d.name for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def committed_total(group: str) -> int:
    """Sum of the group's committed offsets over every partition (events committed)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=config.kafka_bootstrap())
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return sum(max(0, om.offset) for om in offsets.values())


def group_members(group: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=config.kafka_bootstrap())
    try:
        described = admin.describe_groups([group]).get(group) or {}
    finally:
        admin.close()
    return len(described.get("members") or [])
