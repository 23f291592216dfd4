"""Lag monitoring while Kafka is away, against real brokers (no Kafka mocks).

(a) An unreachable bootstrap (a closed port on 127.0.0.1): ``streamflow lag`` prints one line
    "Kafka unreachable at ..." and exits 4; the API's /lag answers 503 with that message and
    /metrics answers 200 with ``streamflow_kafka_up 0``.
(b) A PRIVATE broker (127.0.0.1:29092, its own state under .services/kafka-lag-test, started and stopped with
    ``scripts/services.sh start-kafka|stop-kafka``; the shared broker on 9092 is never touched):
    lag is sampled, the broker is stopped, /lag turns 503 and the CLI exits 4, the broker comes
    back and /lag answers the same figures again with no restart of anything else; a
    ``streamflow lag --watch`` left running shows the unreachable line each round, then the table.

Every wait polls with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from kafka import TopicPartition

from api.app import create_app
from streamflow import config, kafka_clients
from streamflow.kafka_topics import ensure_topics
from streamflow.net import free_port
from streamflow.topics import table_topics
from tests import pipeline
from tests.kafka_cluster import SHARED_STATE, share_broker_jars

PRIVATE_PORT = 29092
PRIVATE_BOOTSTRAP = f"127.0.0.1:{PRIVATE_PORT}"
PRIVATE_STATE = SHARED_STATE / "kafka-lag-test"
PRIVATE_ENV = {
    "STREAMFLOW_STATE_DIR": str(PRIVATE_STATE),
    "KAFKA_PORT": str(PRIVATE_PORT),
    "KAFKA_CONTROLLER_PORT": str(PRIVATE_PORT + 1),
}
SERVICES = str(config.REPO_ROOT / "scripts" / "services.sh")


def closed_port() -> int:
    return free_port()  # nothing listens there once the helper's socket is closed


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0, every: float = 0.3):
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - e.g. a topic not in the sample yet: not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`streamflow lag ...` in a process of its own: its whole stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", "lag", *args],
        cwd=config.REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_unreachable_cli(result: subprocess.CompletedProcess, servers: str) -> None:
    assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Kafka unreachable at {servers}: "), lines[0]
    assert "Traceback" not in result.stderr


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of a Prometheus text answer (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or (
            series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items())
        ):
            return float(value)
    return None


@pytest.fixture()
def lag_env(monkeypatch, pg_settings):
    """Environment of an API whose lag sampler samples fast, times out fast and backs off little;
    the consumer freshness endpoint points at a closed port (no other test's consumer is read)."""
    monkeypatch.setenv("STREAMFLOW_LAG_INTERVAL", "0.5")
    monkeypatch.setenv("STREAMFLOW_LAG_TIMEOUT", "2")
    monkeypatch.setenv("STREAMFLOW_LAG_MAX_BACKOFF", "1")
    monkeypatch.setenv("STREAMFLOW_CONSUMER_METRICS_URL", f"http://127.0.0.1:{closed_port()}/metrics")
    return monkeypatch


# --- (a) nothing listens at the bootstrap address ------------------------------------------------


def test_cli_against_a_closed_port_prints_one_line_and_exits_4():
    servers = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = run_cli("--bootstrap", servers, "--timeout", "1")
    assert_unreachable_cli(result, servers)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_stops_on_a_signal_while_kafka_is_away(sig, tmp_path):
    """The signal lands while the client is trying to reach Kafka (no KeyboardInterrupt inside it):
    the round ends, the clients close, exit 0, no traceback."""
    servers = f"127.0.0.1:{closed_port()}"
    log_path = tmp_path / "watch.log"
    with open(log_path, "wb") as out:
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamflow.cli",
                "lag",
                "--bootstrap",
                servers,
                "--watch",
                "0.5",
                "--timeout",
                "2",
            ],
            cwd=config.REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            "two unreachable rounds",
            lambda: log_path.read_text().count("Kafka unreachable at") >= 2,
            timeout=60,
        )
        watch.send_signal(sig)
        code = watch.wait(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=10)
    text = log_path.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text


def test_api_against_a_closed_port_answers_503_and_kafka_up_0(lag_env):
    servers = f"127.0.0.1:{closed_port()}"
    lag_env.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    lag_env.setenv("STREAMFLOW_CONSUMER_GROUP", f"unreachable-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app()) as client:
        r = client.get("/lag")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "kafka_unreachable"
        assert body["detail"].startswith(f"Kafka unreachable at {servers}: "), body
        assert "Traceback" not in r.text
        assert r.headers["retry-after"] == "1"

        def kafka_down():
            m = client.get("/metrics")
            assert m.status_code == 200
            return m.text if metric(m.text, "streamflow_kafka_up") == 0 else None

        text = wait_for("streamflow_kafka_up 0 on /metrics", kafka_down, timeout=30)
        assert "streamflow_consumer_lag_messages{" not in text
        assert "streamflow_consumer_group_lag_messages{" not in text
        # The sampler thread goes on (with backoff) and each attempt fails the same way.
        sampler = client.app.state.lag_sampler
        wait_for("a few failed attempts", lambda: sampler.failures >= 3, timeout=30)
        assert sampler._thread is not None and sampler._thread.is_alive()
        assert client.get("/lag").status_code == 503
        assert client.get("/health").status_code == 200


# --- sampling from the thread and from requests at once ----------------------------------------


def test_concurrent_samples_and_a_clock_that_went_back_never_fail(lag_env, kafka_bootstrap):
    """The sampler thread and /lag requests sample one at a time; a sample older than the previous
    one (the wall clock stepped back) restarts the status evaluation instead of a ValueError (500)."""
    lag_env.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    lag_env.setenv("STREAMFLOW_CONSUMER_GROUP", f"concurrent-{uuid.uuid4().hex[:8]}")
    lag_env.setenv("STREAMFLOW_LAG_INTERVAL", "0.1")
    with TestClient(create_app()) as client:
        sampler = client.app.state.lag_sampler
        assert client.get("/lag").status_code == 200
        results: list[bool] = []
        errors: list[BaseException] = []

        def hammer():
            try:
                for _ in range(5):
                    results.append(sampler.sample_once())
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [] and results == [True] * 20
        # A previous sample "from the future": the next real one is out of order. (Holding the
        # sampling lock, so the sampler thread does not sample in between; /lag does not need it.)
        with sampler._sampling:
            ahead = dataclasses.replace(
                sampler.latest, sampled_at=sampler.latest.sampled_at + timedelta(hours=1)
            )
            sampler._publish(ahead)
            assert sampler._sample_locked() is True
            r = client.get("/lag")
        assert r.status_code == 200, r.text
        assert r.json()["sample"]["sampled_at"] < ahead.sampled_at.isoformat()
        assert r.json()["status"]["samples"] == 1  # the evaluation started over
        assert sampler._thread.is_alive()
        assert client.get("/lag").status_code == 200


# --- (b) a private broker that goes away and comes back ------------------------------------------


def services(command: str) -> None:
    share_broker_jars(PRIVATE_STATE)
    subprocess.run(
        [SERVICES, command], env={**os.environ, **PRIVATE_ENV}, check=True, capture_output=True, timeout=180
    )


def private_broker_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", PRIVATE_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture()
def private_broker():
    """The private broker, started if needed; left as found (stopped when this fixture started it)."""
    was_running = private_broker_answers()
    services("start-kafka")  # does nothing when it runs already
    try:
        yield PRIVATE_BOOTSTRAP
    finally:
        services("start-kafka" if was_running else "stop-kafka")


@pytest.fixture()
def lagging_group(private_broker, lag_env):
    """Table topics of a fresh prefix on the private broker (2 partitions each); on the first one
    p0 holds 7 records with 2 committed by the group, p1 3 records never committed: lag 5 + 3."""
    prefix = f"lagdown{uuid.uuid4().hex[:8]}"
    group = f"{prefix}-group"
    lag_env.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
    lag_env.setenv("KAFKA_BOOTSTRAP_SERVERS", private_broker)
    lag_env.setenv("STREAMFLOW_CONSUMER_GROUP", group)
    settings = kafka_clients.settings(private_broker)
    topics = table_topics()
    ensure_topics(topics, partitions=2, bootstrap=private_broker)
    producer = kafka_clients.producer("lagtest", kafka=settings)
    try:
        for partition, count in ((0, 7), (1, 3)):
            for i in range(count):
                producer.send(
                    topics[0], key=f"{i:04d}-ABCDE".encode(), value=b'{"i": %d}' % i, partition=partition
                )
        producer.flush(timeout=30)
    finally:
        producer.close()
    pipeline.commit_offsets(group, {TopicPartition(topics[0], 0): 2}, settings.bootstrap_servers)
    yield group, topics
    if private_broker_answers():
        admin = kafka_clients.admin("lagtest", kafka=settings)
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()


def expected_lag(body: dict, topic: str) -> bool:
    """/lag shows the figures of the fixture: 5 pending on p0 (committed 2 of 7), 3 on p1."""
    sample = body["sample"]
    rows = {(p["topic"], p["partition"]): p for t in sample["topics"] for p in t["partitions"]}
    p0, p1 = rows[(topic, 0)], rows[(topic, 1)]
    return (
        sample["lag"] == 8
        and (p0["committed_offset"], p0["log_end_offset"], p0["lag"]) == (2, 7, 5)
        and (p1["committed_offset"], p1["log_end_offset"], p1["lag"]) == (None, 3, 3)
        and p0["lag_seconds"] is not None
        and p0["lag_seconds"] >= 0
    )


def lag_ok(client: TestClient, topic: str):
    r = client.get("/lag")
    return r.status_code == 200 and expected_lag(r.json(), topic) and r.json()


def metrics_ok(client: TestClient, group: str):
    text = client.get("/metrics").text
    return (
        metric(text, "streamflow_kafka_up") == 1
        and metric(text, "streamflow_consumer_group_lag_messages", group=group) == 8
        and text
    )


@pytest.mark.slow
def test_lag_recovers_when_the_broker_comes_back(lagging_group, tmp_path):
    group, topics = lagging_group
    cli_env = {"KAFKA_BOOTSTRAP_SERVERS": PRIVATE_BOOTSTRAP}  # and the fixture's topic prefix
    with TestClient(create_app()) as client:
        # Up: right figures on /lag and /metrics (a fresh broker may still be electing the group
        # coordinator: poll).
        body = wait_for("/lag 200 with lag 8", lambda: lag_ok(client, topics[0]), timeout=60)
        assert body["error"] is None and body["group"] == group
        wait_for("kafka up 1 and group lag 8 on /metrics", lambda: metrics_ok(client, group), timeout=30)
        ok = run_cli("--group", group, "--json", "--samples", "1", "--timeout", "5", env=cli_env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["lag"] == 8

        # A --watch left running through the outage.
        watch_log = tmp_path / "watch.log"
        with open(watch_log, "wb") as out:
            watch = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamflow.cli",
                    "lag",
                    "--group",
                    group,
                    "--watch",
                    "0.5",
                    "--timeout",
                    "2",
                ],
                cwd=config.REPO_ROOT,
                env={**os.environ, **cli_env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            header = re.compile(r"^GROUP\s+TOPIC\s+PARTITION\s", re.M)
            wait_for("the first table of --watch", lambda: header.search(watch_log.read_text()), timeout=60)
            assert watch.poll() is None, watch_log.read_text()

            # Down.
            services("stop-kafka")
            assert not private_broker_answers()

            def lag_503():
                r = client.get("/lag")
                return r.status_code == 503 and r.json()

            err = wait_for("/lag 503", lag_503, timeout=60)
            assert err["error"] == "kafka_unreachable"
            assert err["detail"].startswith(f"Kafka unreachable at {PRIVATE_BOOTSTRAP}: "), err

            def metrics_down():
                text = client.get("/metrics").text
                return metric(text, "streamflow_kafka_up") == 0 and text

            text = wait_for("kafka up 0 on /metrics", metrics_down, timeout=30)
            assert metric(text, "streamflow_consumer_group_lag_messages", group=group) is None
            assert metric(text, "streamflow_consumer_lag_messages", group=group) is None
            assert metric(text, "streamflow_consumer_lag_sample_timestamp_seconds", group=group) is not None

            down = wait_for(
                "the CLI to exit 4",
                lambda: (r := run_cli("--group", group, "--timeout", "2", env=cli_env)).returncode == 4 and r,
                timeout=60,
            )
            assert_unreachable_cli(down, PRIVATE_BOOTSTRAP)
            wait_for(
                "--watch to print the unreachable line twice",
                lambda: watch_log.read_text().count(f"Kafka unreachable at {PRIVATE_BOOTSTRAP}: ") >= 2,
                timeout=60,
            )
            assert watch.poll() is None, watch_log.read_text()  # --watch goes on

            # Back: everything recovers by itself.
            services("start-kafka")
            body = wait_for("/lag 200 with lag 8 again", lambda: lag_ok(client, topics[0]), timeout=90)
            assert body["error"] is None
            text = wait_for("kafka up 1 and group lag 8 again", lambda: metrics_ok(client, group), timeout=30)
            assert (
                metric(text, "streamflow_consumer_lag_messages", group=group, topic=topics[0], partition="0")
                == 5
            )
            assert (
                metric(text, "streamflow_consumer_lag_messages", group=group, topic=topics[0], partition="1")
                == 3
            )

            def table_after_outage():
                log = watch_log.read_text()
                last_down = log.rfind("Kafka unreachable at")
                return last_down >= 0 and header.search(log, last_down)

            wait_for("--watch to show the table again", table_after_outage, timeout=60)
            assert watch.poll() is None, watch_log.read_text()
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0, watch_log.read_text()
            log = watch_log.read_text()
            assert "Traceback" not in log, log
            assert all(
                line.startswith("Kafka unreachable at") for line in log.splitlines() if "nreachable" in line
            )
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=10)
        ok = run_cli("--group", group, "--json", "--samples", "1", "--timeout", "5", env=cli_env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["lag"] == 8
