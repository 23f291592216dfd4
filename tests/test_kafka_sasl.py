"""Kafka with SASL/SCRAM, against a real broker of its own (no mocks).

A PRIVATE broker (127.0.0.1:29192, controller 29193, state under .services/kafka-sasl-test) is
started by ``scripts/services.sh`` with ``KAFKA_SASL=1``: its client listener is SASL_PLAINTEXT with
one SCRAM-SHA-512 user, made for this run. The shared broker on 9092 is never touched.

* replay -> consume -> lag through it, with the real commands (``streamflow produce``, ``consume``,
  ``lag``) and only the environment pointing at it: the online store ends up with the snapshot, the
  group has committed every event and ``lag`` reports 0;
* a client without SASL gets nothing from that broker;
* a wrong password: each command prints ONE line naming the broker, the user and the mechanism,
  no traceback, exits 2 (a bad setting), and nothing is written: no event on the topics, no row in
  PostgreSQL, no offset committed.

Every wait polls with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from streamflow import config, kafka_clients, schema
from streamflow.datagen.generate import generate
from streamflow.errors import ServiceUnavailable
from streamflow.kafka_topics import ensure_topics
from streamflow.topics import dead_letter_topic, table_topics
from tests import pipeline
from tests.kafka_cluster import SHARED_STATE, SingleBroker, wait_until

PORT = 29192  # (29092 is tests/test_lag_unreachable.py's private broker)
STATE = SHARED_STATE / "kafka-sasl-test"
USER = "sasl-test"
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
USERS = 40
REFUSED = f"Kafka at 127.0.0.1:{PORT} refused the credentials of user {USER} (SCRAM-SHA-512)"


@pytest.fixture(scope="module")
def broker():
    broker = SingleBroker(PORT, STATE, sasl=(USER, PASSWORD))
    broker.reset()  # stops what an earlier run left running here; a new storage gets this run's user
    # a broker an earlier run left on these ports (other state dir) is given time to stop
    wait_until(lambda: not broker.ports_in_use(), 300, f"ports {PORT}/{PORT + 1} free")
    broker.up()
    try:
        yield broker
    finally:
        broker.close_admin()
        broker.run("stop-kafka", check=False)


@pytest.fixture()
def sasl_env(broker, monkeypatch, pg_settings):
    """This process and the commands it starts use the SASL broker, topics of their own and empty
    stores; returns a consumer group name of its own."""
    prefix = pipeline.fresh_prefix()
    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
    for name, value in broker.client_env().items():
        monkeypatch.setenv(name, value)
    pipeline.reset_store()
    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    yield f"{prefix}-group"
    pipeline.delete_topics(prefix)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    out = tmp_path_factory.mktemp("snapshots")
    generate(out, users=USERS, seed=11, progress=False)
    return out / "month_000"


def streamflow(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """``streamflow <args>`` in a process of its own, with this process's environment (+ ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        cwd=config.REPO_ROOT,
        env={**os.environ, "STREAMFLOW_NO_PROGRESS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr[-3000:])
    return done


def rows_written() -> dict[str, int]:
    """Rows of every offline (snapshot) table and every online table of the test project."""
    from feature_repo import definitions
    from streamflow.feast_stores.online import table_name

    project = os.environ["FEAST_PROJECT"]
    tables = [t.snapshot_table for t in schema.TABLES]
    tables += [table_name(project, view) for view in definitions.FEATURE_VIEWS.values()]
    counts = {}
    with psycopg.connect(config.postgres().conninfo) as conn:
        for table in tables:
            counts[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    return counts


def test_replay_consume_and_lag_through_a_sasl_broker(sasl_env, snapshot):
    group = sasl_env
    events = 6 * USERS
    ok(streamflow("produce", str(snapshot)))
    ends = pipeline.end_offsets(table_topics())
    assert sum(ends.values()) == events

    ok(streamflow("consume", "--group", group, "--until-drained", "--max-idle", "120"))
    assert pipeline.online_state(pipeline.users_of(snapshot)) == pipeline.expected_online(snapshot)
    assert pipeline.committed_offsets(group) == {tp: end for tp, end in ends.items() if end > 0}

    lag = ok(streamflow("lag", "--group", group, "--json", "--samples", "1"))
    doc = json.loads(lag.stdout)
    assert doc["group"] == group and doc["lag"] == 0
    assert sum(p["committed_offset"] or 0 for t in doc["topics"] for p in t["partitions"]) == events


def test_a_client_without_sasl_gets_nothing_from_the_broker(broker):
    plain = broker.settings().model_copy(
        update=dict(
            security_protocol="PLAINTEXT",
            sasl_mechanism=None,
            sasl_username=None,
            sasl_password=None,
            bootstrap_timeout_ms=3000,
        )
    )
    with pytest.raises(ServiceUnavailable, match=f"^Kafka at 127.0.0.1:{PORT} is not reachable"):
        kafka_clients.admin("test-plain", kafka=plain)
    with kafka_clients.admin_session("test-sasl", kafka=broker.settings()) as admin:
        assert isinstance(admin.list_topics(), list)  # the same broker, with the credentials


def assert_refused(done: subprocess.CompletedProcess) -> None:
    """Exit code 2 (a bad setting) and one line on stderr, naming broker, user and mechanism."""
    where = (done.args, done.returncode, done.stdout, done.stderr)
    assert done.returncode == 2, where
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, where
    lines = done.stderr.splitlines()
    assert len(lines) == 1, where
    assert REFUSED in lines[0] and "KAFKA_SASL_PASSWORD" in lines[0], where
    assert "wrong-" not in done.stderr  # the password is never shown


def test_a_wrong_password_is_one_clear_line_and_writes_nothing(sasl_env, snapshot):
    group = sasl_env
    wrong = {
        "KAFKA_SASL_PASSWORD": f"wrong-{uuid.uuid4().hex[:8]}",
        # kafka-python retries a refused login until its bootstrap timeout (15 s): a shorter test
        "STREAMFLOW_KAFKA_BOOTSTRAP_TIMEOUT_MS": "8000",
    }
    assert_refused(streamflow("produce", str(snapshot), env=wrong, timeout=120))
    assert_refused(streamflow("consume", "--group", group, "--until-drained", env=wrong, timeout=120))
    assert_refused(streamflow("lag", "--group", group, "--samples", "1", "--timeout", "8", env=wrong))

    # nothing written anywhere (read with the right credentials)
    assert set(pipeline.end_offsets(table_topics() + [dead_letter_topic()]).values()) == {0}
    assert set(rows_written().values()) == {0}
    assert pipeline.committed_offsets(group) == {}


def test_the_scram_password_is_in_no_process_arguments(tmp_path, monkeypatch):
    """services.sh formats a SASL broker's storage with the SCRAM user in a java argument file
    (mode 600, removed after): a `java` first on the PATH logs every argument list it is given."""
    shims = tmp_path / "bin"
    shims.mkdir()
    calls = tmp_path / "java-calls"
    real_java = subprocess.run(
        ["bash", "-c", "command -v java"], capture_output=True, text=True
    ).stdout.strip()
    (shims / "java").write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$*" >>{calls}\nfor a in "$@"; do case $a in @*) '
        f'ls -l "${{a#@}}" >>{calls}.files;; esac; done\nexec {real_java} "$@"\n'
    )
    (shims / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    password = f"pw-{uuid.uuid4().hex}"
    broker = SingleBroker(29392, tmp_path / "state", sasl=("argfile-test", password))
    wait_until(lambda: not broker.ports_in_use(), 300, "ports 29392/29393 free")
    try:
        broker.up()
        with kafka_clients.admin_session("test-sasl-argfile", kafka=broker.settings()) as admin:
            admin.list_topics()  # the user the storage was formatted with logs in
        logged = calls.read_text()
        assert "StorageTool" not in logged  # the format's main class and arguments came from a file
        assert "@" in logged and password not in logged
        assert "-rw-------" in (tmp_path / "java-calls.files").read_text()
        assert not list((tmp_path / "state").rglob("format.args"))  # removed after the format
    finally:
        broker.close_admin()
        broker.run("reset-kafka", check=False)
