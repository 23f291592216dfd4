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

from streamflow import config, kafka_clients, schema, warehouse
from streamflow.batch.validate import read_snapshot
from streamflow.feature_store import apply, get_store
from streamflow.topics import table_topics

REPO = config.REPO_ROOT


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def users_of(folder: Path) -> list[str]:
    """The user ids of a snapshot folder, in file order."""
    return pd.read_csv(folder / "users.csv", usecols=[schema.KEY])[schema.KEY].tolist()


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


def drain(group: str, max_idle: float = 60.0, write_processes: int | None = None) -> dict[str, float]:
    """Run one consumer in-process until every partition is consumed (``write_processes``: its
    write workers, the default when None; 0 decodes and writes in this process)."""
    from consumer.runner import ConsumerSettings, StreamConsumer
    from streamflow.kafka_topics import ensure_topics
    from streamflow.topics import dead_letter_topic, table_topics

    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    settings = ConsumerSettings(group_id=group, until_drained=True, max_idle_seconds=max_idle)
    if write_processes is not None:
        settings.write_processes = write_processes
    consumer = StreamConsumer(settings)
    return consumer.run()


def consumer_process(group: str, *args: str, log_path: Path | None = None) -> subprocess.Popen:
    """Start a consumer as its own process (same environment: topics, database, project)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "--group", group, *args],
        cwd=REPO,
        env={**os.environ, "STREAMFLOW_LOG_LEVEL": "INFO"},
        stdout=out,
        stderr=out,
    )


def api_process(port: int, *, log_path: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `streamflow api` as its own process on 127.0.0.1:port (same environment plus ``env``)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=out,
    )


def wait_http(url: str, timeout: float = 60) -> None:
    """Wait until a GET of ``url`` answers 2xx (OSError after ``timeout`` seconds)."""
    import time as _time
    import urllib.request

    deadline = _time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if _time.monotonic() > deadline:
                raise
            _time.sleep(0.3)


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
    result = (
        get_store()
        .get_online_features(
            features=refs, entity_rows=[{schema.KEY: u} for u in users], full_feature_names=True
        )
        .to_dict()
    )
    state = {}
    for i, user in enumerate(result[schema.KEY]):
        state[user] = {ref: _norm(result[ref.replace(":", "__")][i]) for ref in refs}
    return state


def online_event_times(view: str) -> dict[bytes, datetime]:
    from streamflow.feast_stores.online import table_name

    with psycopg.connect(config.postgres().conninfo) as conn:
        rows = conn.execute(
            f'SELECT entity_key, event_ts FROM "{table_name(os.environ["FEAST_PROJECT"], view)}"'
        ).fetchall()
    return {bytes(k): ts for k, ts in rows}


def offline_rows(table: schema.Table) -> pd.DataFrame:
    with psycopg.connect(config.postgres().conninfo) as conn:
        cur = conn.execute(f"SELECT * FROM {table.snapshot_table} ORDER BY user_id, as_of")
        cols = [d.name for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def commit_offsets(group: str, offsets: dict, bootstrap: str | None = None) -> None:
    """Commit ``offsets`` ({TopicPartition: offset}) for the group like a consumer that stopped
    there: assign, commit, leave (it never joins the group)."""
    from kafka import OffsetAndMetadata

    kafka = kafka_clients.settings(bootstrap) if bootstrap else None
    c = kafka_clients.group_consumer(group, role="test-commit", kafka=kafka)
    try:
        c.assign(list(offsets))
        c.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
    finally:
        c.close(autocommit=False)


def committed_total(group: str) -> int:
    """Sum of the group's committed offsets over every partition (events committed)."""
    return sum(committed_offsets(group).values())


def settled(read, what: str, timeout: float = 60.0):
    """read() again while Kafka answers "not yet" (a retriable error: the group coordinator moving
    or loading its offsets after a broker restart, a connection being re-established), up to
    ``timeout`` seconds; then the last error is raised."""
    import time as _time

    from kafka.errors import RetriableError

    deadline = _time.monotonic() + timeout
    while True:
        try:
            return read()
        except RetriableError as exc:
            if _time.monotonic() > deadline:
                raise RetriableError(
                    f"{what}: Kafka still answered {type(exc).__name__} after {timeout:.0f} s: {exc}"
                ) from exc
            _time.sleep(0.2)


def describe_group(group: str) -> dict:
    """The broker's description of a group: state, members and their assignments."""

    def read():
        with kafka_clients.admin_session("test") as admin:
            return admin.describe_groups([group]).get(group) or {}

    return settled(read, f"group {group}")


def group_members(group: str) -> int:
    return len(describe_group(group).get("members") or [])


def group_settled(group: str, members: int) -> bool:
    """Whether the group is Stable with ``members`` members, each holding partitions (the broker's
    view): the state in which every member consumes."""
    described = describe_group(group)
    held = [
        len((m.get("member_assignment") or {}).get("assigned_partitions") or [])
        for m in described.get("members") or []
    ]
    return described.get("group_state") == "Stable" and len(held) == members and all(held)


# --- reliability scenarios (tests/test_reliability.py, tests/test_bad_input.py) --------------------


def committed_offsets(group: str) -> dict:
    """TopicPartition -> the group's committed offset (partitions without a commit are absent)."""

    def read():
        with kafka_clients.admin_session("test") as admin:
            return admin.list_group_offsets({group: None}).get(group, {})

    offsets = settled(read, f"committed offsets of group {group}")
    return {tp: om.offset for tp, om in offsets.items() if om.offset is not None and om.offset >= 0}


def end_offsets(topics: list[str]) -> dict:
    """TopicPartition -> log-end offset, for every partition of the topics."""
    from kafka import TopicPartition

    def read():
        reader = kafka_clients.reader("test")
        try:
            tps = [TopicPartition(t, p) for t in topics for p in sorted(reader.partitions_for_topic(t) or ())]
            return dict(reader.end_offsets(tps)) if tps else {}
        finally:
            reader.close()

    return settled(read, f"log-end offsets of {len(topics)} topics")


def caught_up(group: str, topics: list[str] | None = None) -> bool:
    """Whether the group has committed every partition of the topics up to its log end."""
    ends = end_offsets(topics or table_topics())
    committed = committed_offsets(group)
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())


def read_topic(topic: str, timeout: float = 30.0) -> list:
    """Every record of a topic, from the beginning up to its log end at the time of the call."""
    import time as _time

    from kafka import TopicPartition

    reader = kafka_clients.reader("test")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        records = []
        deadline = _time.monotonic() + timeout
        while any(reader.position(tp) < ends[tp] for tp in tps):
            if _time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout} s")
            for recs in reader.poll(timeout_ms=500).values():
                records.extend(recs)
        return records
    finally:
        reader.close()


def offline_check(folders: list[Path]) -> dict[str, int]:
    """Compare the offline snapshot tables with the snapshot folders (every table, every month).

    Returns counts: expected rows, rows found, lost (expected, missing), unexpected (present, not
    expected), wrong (present with other values), duplicates (more than one row per user and as_of).
    """
    counts = dict(expected=0, found=0, lost=0, unexpected=0, wrong=0, duplicates=0)
    frames = {folder: read_snapshot(folder) for folder in folders}
    for table in schema.TABLES:
        expected: dict[tuple[str, str], tuple] = {}
        for folder in folders:
            day = schema.snapshot_as_of(folder.name).isoformat()
            for row in frames[folder][table.name].to_dict("records"):
                expected[(row[schema.KEY], day)] = tuple(_norm(row[c]) for c in table.feature_names)
        rows = offline_rows(table)
        found: dict[tuple[str, str], tuple] = {}
        for row in rows.to_dict("records"):
            as_of = pd.Timestamp(row[schema.SNAPSHOT_TIME]).tz_convert("UTC").date().isoformat()
            key = (row[schema.KEY], as_of)
            if key in found:
                counts["duplicates"] += 1
            found[key] = tuple(_norm(row[c]) for c in table.feature_names)
        counts["expected"] += len(expected)
        counts["found"] += len(rows)
        counts["lost"] += len(expected.keys() - found.keys())
        counts["unexpected"] += len(found.keys() - expected.keys())
        counts["wrong"] += sum(1 for k in expected.keys() & found.keys() if expected[k] != found[k])
    return counts


def online_mismatches(folder: Path) -> int:
    """Users whose online features differ from a snapshot folder's values (every table)."""
    expected = expected_online(folder)
    actual = online_state(list(expected))
    return sum(1 for user, values in expected.items() if actual.get(user) != values)


RELIABILITY_RESULTS = REPO / "bench" / "results" / "reliability.json"


def record_reliability(scenario: str, **figures) -> None:
    """Print a scenario's figures and merge them into bench/results/reliability.json."""
    import json
    import time as _time

    figures = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()}
    print(f"\n[reliability] {scenario}: {json.dumps(figures)}")
    RELIABILITY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc = json.loads(RELIABILITY_RESULTS.read_text())
    except (OSError, ValueError):
        doc = {}
    doc.setdefault("scenarios", {})[scenario] = {
        **figures,
        "measured_at": _time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = RELIABILITY_RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(RELIABILITY_RESULTS)


def delete_topics(prefix: str) -> None:
    """Delete a test's topics: every topic named <prefix>.* or <prefix>x.* (cleanup, never fails)."""
    try:
        admin = kafka_clients.admin("test", request_timeout_ms=15_000)
    except Exception:  # noqa: BLE001 - cleanup only
        return
    try:
        mine = [t for t in admin.list_topics() if t.startswith((f"{prefix}.", f"{prefix}x."))]
        if mine:
            admin.delete_topics(mine)
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    finally:
        admin.close()
