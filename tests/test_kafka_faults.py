"""The Kafka fault matrix (issue 8), against real brokers of the tests' own.

Every scenario runs the real producer and consumer as processes and counts exactly: events sent,
events acknowledged, rows written online and offline, duplicates, lost, and recovery time. The
consumer and the producer stay up through every fault, unless the scenario is about an exit code.

The brokers are private to these tests (their own ports and state under .services/), so a fault
never touches the broker that the rest of the suite and the demo use:

* one broker on 127.0.0.1:$STREAMFLOW_FAULT_PORT (default 29192): stopped and started 5 times;
  hung (SIGSTOP) for 20 s; gone for longer than the consumer's --max-outage;
* three brokers from 127.0.0.1:$STREAMFLOW_CLUSTER_PORT (default 19092): the leader of a partition
  being written SIGKILLed mid-replay; the active controller SIGKILLed; two nodes down (below
  min.insync.replicas=2);
* PostgreSQL hung (SIGSTOP, every process of the server) for 20 s while the consumer writes.

Figures go to bench/results/reliability.json like the other reliability scenarios.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from streamflow import schema
from streamflow.datagen.generate import generate
from streamflow.kafka_topics import ensure_topics
from streamflow.topics import dead_letter_topic, table_topics, topic_of
from tests import pipeline
from tests.kafka_cluster import SHARED_STATE as STATE
from tests.kafka_cluster import Cluster, SingleBroker
from tests.test_reliability import (
    EVENTS,
    USERS,
    final_figures,
    logged,
    producer_process,
    stop,
    summary_totals,
    table_records,
    wait_until,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("STREAMFLOW_RELIABILITY_SEED", "7"))
RESTARTS = int(os.environ.get("STREAMFLOW_FAULT_RESTARTS", "5"))
SINGLE_PORT = int(os.environ.get("STREAMFLOW_FAULT_PORT", "29192"))
CLUSTER_PORT = int(os.environ.get("STREAMFLOW_CLUSTER_PORT", "19092"))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("fault_snapshots")
    generate(out, users=USERS, seed=5, progress=False)
    return out / "month_000", out / "month_001"


@pytest.fixture(scope="module")
def single():
    broker = SingleBroker(port=SINGLE_PORT, state_dir=STATE / "kafka-faults-single")
    broker.up()
    yield broker
    broker.down()


@pytest.fixture(scope="module")
def cluster():
    nodes = Cluster(brokers=3, port=CLUSTER_PORT, state_dir=STATE / "kafka-faults-cluster")
    nodes.up()
    yield nodes
    nodes.down()


def on(brokers: Cluster, monkeypatch, pg_settings) -> str:
    """Point every client (this process and the processes it starts) at these brokers, with fresh
    topics and empty stores; returns a consumer group of its own."""
    for n in brokers.nodes:
        if brokers.pid(n) is None:
            brokers.start_node(n)
    brokers.wait_brokers()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", brokers.bootstrap)
    prefix = pipeline.fresh_prefix()
    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
    pipeline.reset_store()
    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    brokers.wait_all_in_sync(table_topics())
    return f"{prefix}-group"


def ask(call, what: str):
    """A reading from Kafka right after a fault: retried while the broker still says "not yet"
    (e.g. the group coordinator loading its offsets)."""
    return wait_until(lambda: (call(),), timeout=120, interval=0.2, what=what)[0]


def running(*procs: subprocess.Popen) -> bool:
    return all(p.poll() is None for p in procs)


def assert_no_traceback(*paths: Path) -> None:
    for path in paths:
        assert "Traceback" not in logged(path), logged(path)[-3000:]


@contextlib.contextmanager
def explained(consumer: subprocess.Popen, clog: Path):
    """A wait on the consumer that fails says where the consumer was: every thread's stack
    (faulthandler, SIGUSR1) and the end of its log."""
    try:
        yield
    except AssertionError as exc:
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGUSR1)
            with contextlib.suppress(AssertionError):
                wait_until(lambda: "most recent call first" in logged(clog), timeout=10, what="stacks")
        raise AssertionError(f"{exc}\n--- consumer log ---\n{logged(clog)[-20000:]}") from None


def finish(consumer: subprocess.Popen, group: str, clog: Path, since: float) -> float:
    """Wait until the group has committed every event, stop the consumer (exit 0); returns the
    seconds from ``since`` to caught up."""
    with explained(consumer, clog):
        wait_until(lambda: pipeline.caught_up(group), timeout=240, interval=0.5, what="consumer caught up")
    caught = time.monotonic() - since
    assert consumer.poll() is None, "the consumer died:\n" + logged(clog)[-3000:]
    assert stop(consumer) == 0, logged(clog)[-3000:]
    return caught


class Stream:
    """The real consumer (a process of its own) and producer of one scenario, with their logs."""

    def __init__(self, group: str, tmp_path: Path):
        self.group = group
        self.clog, self.plog = tmp_path / "consumer.log", tmp_path / "producer.log"
        self.consumer: subprocess.Popen | None = None
        self.producer: subprocess.Popen | None = None


@contextlib.contextmanager
def streaming(group: str, folders: list[Path], tmp_path: Path, *producer_args: str, flowing: int = 300):
    """Start a consumer, wait until it joined, replay the folders with ``producer_args`` and wait
    until ``flowing`` events are on the topics; whatever still runs at the end is killed."""
    s = Stream(group, tmp_path)
    s.consumer = pipeline.consumer_process(group, "--max-batch", "50", log_path=s.clog)
    try:
        wait_until(lambda: pipeline.group_settled(group, 1), timeout=120, what="consumer joined")
        s.producer = producer_process(folders, *producer_args, log_path=s.plog)
        wait_until(lambda: table_records() > flowing, timeout=120, what="events flowing")
        yield s
    finally:
        for proc in (s.producer, s.consumer):
            if proc is not None and proc.poll() is None:
                stop(proc, signal.SIGKILL)


def delivered_exactly(s: Stream, m0: Path, m1: Path) -> tuple[dict, dict]:
    """Every event sent and acknowledged once, the store equal to the snapshots, no traceback."""
    totals = summary_totals(logged(s.plog))
    assert totals == {"sent": EVENTS, "acked": EVENTS, "failed": 0, "unacknowledged": 0}
    figures = final_figures(m0, m1)
    exact(figures)
    assert_no_traceback(s.clog, s.plog)
    return totals, figures


def exact(figures: dict) -> None:
    assert figures["lost"] == 0 and figures["duplicates"] == 0, figures
    assert figures["unexpected"] == 0 and figures["wrong"] == 0, figures
    assert figures["online_mismatches"] == 0, figures
    assert figures["written"] == EVENTS, figures


# --- one broker ------------------------------------------------------------------------------------


def test_one_broker_stopped_and_started_five_times_during_replay_and_consume(
    snapshots, single, monkeypatch, pg_settings, tmp_path
):
    m0, m1 = snapshots
    group = on(single, monkeypatch, pg_settings)
    rng = random.Random(SEED)
    recoveries = []
    with streaming(group, [m0, m1], tmp_path, "--rate", "45", flowing=100) as s:
        consumer, producer, clog, plog = s.consumer, s.producer, s.clog, s.plog
        for cycle in range(RESTARTS):
            time.sleep(rng.uniform(0.5, 4.0))  # a random moment of the replay / the consume
            stopping = time.strftime("%H:%M:%S")
            single.stop_node(1)
            time.sleep(rng.uniform(0.5, 3.0))  # down for a random while
            started = time.strftime("%H:%M:%S")
            single.start_node(1)
            back = time.monotonic()
            # the timeline, to read beside the consumer's log when a cycle fails
            answering = time.strftime("%H:%M:%S")
            print(f"cycle {cycle}: broker stopping {stopping}, starting {started}, answering {answering}")
            assert running(consumer), f"cycle {cycle}: consumer died\n" + logged(clog)[-3000:]
            base = ask(lambda: pipeline.committed_total(group), "committed offsets after the restart")
            # something to consume: the time to the next commit
            if ask(table_records, "log-end offsets after the restart") > base:
                with explained(consumer, clog):
                    wait_until(
                        lambda base=base: pipeline.committed_total(group) > base,
                        timeout=120,
                        interval=0.1,
                        what=f"cycle {cycle}: a commit after the restart",
                    )
                recoveries.append(time.monotonic() - back)
        assert producer.wait(timeout=300) == 0, logged(plog)[-3000:]
        caught = finish(consumer, group, clog, time.monotonic())
    totals, figures = delivered_exactly(s, m0, m1)
    assert table_records() == EVENTS  # idempotent producer: no duplicate from its retries
    pipeline.record_reliability(
        f"K1. one broker stopped and started {RESTARTS} times during replay and consume",
        sent=totals["sent"],
        acked=totals["acked"],
        written=figures["written"],
        lost=figures["lost"],
        duplicates=figures["duplicates"],
        kafka_duplicates=table_records() - EVENTS,
        restarts=RESTARTS,
        recovery_seconds=max(recoveries) if recoveries else None,
        caught_up_after_replay_seconds=caught,
        recovery=f"broker answering again to the consumer's next commit (worst of the {RESTARTS})",
    )


def test_one_broker_hung_for_20_seconds(snapshots, single, monkeypatch, pg_settings, tmp_path):
    m0, m1 = snapshots
    group = on(single, monkeypatch, pg_settings)
    with streaming(group, [m0, m1], tmp_path, "--rate", "60") as s:
        consumer, producer, clog, plog = s.consumer, s.producer, s.clog, s.plog
        single.sigstop(1)
        try:
            hung = time.monotonic()
            while time.monotonic() - hung < 20:  # the hang itself is the fault: 20 s
                assert running(consumer, producer), logged(clog)[-2000:] + logged(plog)[-2000:]
                time.sleep(0.5)
        finally:
            single.sigcont(1)
        back = time.monotonic()
        base = ask(lambda: pipeline.committed_total(group), "committed offsets after the hang")
        with explained(consumer, clog):
            wait_until(
                lambda: pipeline.committed_total(group) > base,
                timeout=120,
                interval=0.1,
                what="a commit after the hang",
            )
        recovery = time.monotonic() - back
        assert producer.wait(timeout=300) == 0, logged(plog)[-3000:]
        finish(consumer, group, clog, back)
    totals, figures = delivered_exactly(s, m0, m1)
    assert table_records() == EVENTS
    pipeline.record_reliability(
        "K2. one broker hung (SIGSTOP 20 s, then SIGCONT)",
        sent=totals["sent"],
        acked=totals["acked"],
        written=figures["written"],
        lost=figures["lost"],
        duplicates=figures["duplicates"],
        kafka_duplicates=table_records() - EVENTS,
        hang_seconds=20,
        recovery_seconds=recovery,
        recovery="SIGCONT to the consumer's next commit",
    )


def test_consumer_gives_up_after_its_outage_budget_with_one_clear_line(
    single, monkeypatch, pg_settings, tmp_path
):
    group = on(single, monkeypatch, pg_settings)
    clog = tmp_path / "consumer.log"
    consumer = pipeline.consumer_process(group, "--max-outage", "6", log_path=clog)
    try:
        wait_until(lambda: pipeline.group_settled(group, 1), timeout=120, what="consumer joined")
        single.stop_node(1)
        gone = time.monotonic()
        code = consumer.wait(timeout=120)
        waited = time.monotonic() - gone
    finally:
        if consumer.poll() is None:
            stop(consumer, signal.SIGKILL)
        single.start_node(1)
    text = logged(clog)
    assert code == 4, text[-3000:]
    assert 6 <= waited < 60, waited
    final = [ln for ln in text.splitlines() if "outage budget" in ln]
    assert len(final) == 1 and "ERROR" in final[0] and "--max-outage 6" in final[0], text[-3000:]
    assert "Traceback" not in text
    pipeline.record_reliability(
        "K3. Kafka gone longer than --max-outage 6", exit_code=code, exit_after_seconds=waited
    )


# --- three brokers ---------------------------------------------------------------------------------


def kill_mid_replay(snapshots, cluster: Cluster, monkeypatch, pg_settings, tmp_path, pick, scenario: str):
    m0, m1 = snapshots
    group = on(cluster, monkeypatch, pg_settings)
    with streaming(group, [m0, m1], tmp_path, "--rate", "60") as s:
        consumer, producer, clog, plog = s.consumer, s.producer, s.clog, s.plog
        victim = pick()
        cluster.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        at_kill = ask(table_records, "log-end offsets after the kill")
        committed_at_kill = ask(lambda: pipeline.committed_total(group), "committed offsets after the kill")
        # the other two carry on: acknowledged writes continue (min.insync.replicas=2), and the
        # consumer commits again
        wait_until(
            lambda: table_records() > at_kill + 200 or producer.poll() is not None,
            timeout=120,
            interval=0.2,
            what="writes going on without the killed node",
        )
        resumed = time.monotonic() - killed
        with explained(consumer, clog):
            wait_until(
                lambda: pipeline.committed_total(group) > committed_at_kill,
                timeout=120,
                interval=0.2,
                what="a commit without the killed node",
            )
        commit_resumed = time.monotonic() - killed
        assert running(consumer), logged(clog)[-3000:]
        cluster.start_node(victim)  # ...and restarted later
        assert producer.wait(timeout=300) == 0, logged(plog)[-3000:]
        caught = finish(consumer, group, clog, killed)
        cluster.wait_all_in_sync(table_topics())
    totals, figures = delivered_exactly(s, m0, m1)
    assert table_records() == EVENTS
    pipeline.record_reliability(
        scenario,
        sent=totals["sent"],
        acked=totals["acked"],
        written=figures["written"],
        lost=figures["lost"],
        duplicates=figures["duplicates"],
        kafka_duplicates=table_records() - EVENTS,
        killed_node=victim,
        writes_resumed_seconds=resumed,
        recovery_seconds=commit_resumed,
        caught_up_seconds=caught,
        recovery="kill to the consumer's next commit (writes_resumed: kill to 200 more events "
        "acknowledged; the replay went on meanwhile)",
    )


def test_three_brokers_partition_leader_killed_mid_replay(
    snapshots, cluster, monkeypatch, pg_settings, tmp_path
):
    kill_mid_replay(
        snapshots,
        cluster,
        monkeypatch,
        pg_settings,
        tmp_path,
        lambda: cluster.leader_of(topic_of(schema.TABLES[0]), 0),
        "K4. three brokers: leader of a written partition SIGKILLed",
    )


def test_three_brokers_active_controller_killed_mid_replay(
    snapshots, cluster, monkeypatch, pg_settings, tmp_path
):
    kill_mid_replay(
        snapshots,
        cluster,
        monkeypatch,
        pg_settings,
        tmp_path,
        cluster.active_controller,
        "K5. three brokers: active controller SIGKILLed",
    )


def test_three_brokers_two_down_below_min_isr_producer_reports_and_loses_nothing_acked(
    snapshots, cluster, monkeypatch, pg_settings, tmp_path
):
    m0, m1 = snapshots
    group = on(cluster, monkeypatch, pg_settings)
    plog2 = tmp_path / "producer2.log"
    with streaming(group, [m0, m1], tmp_path, "--rate", "60", "--delivery-timeout", "10") as s:
        consumer, producer, clog, plog = s.consumer, s.producer, s.clog, s.plog
        survivor = cluster.leader_of(topic_of(schema.TABLES[0]), 0)
        down = [n for n in cluster.nodes if n != survivor]
        for n in down:
            cluster.stop_node(n)
        code = producer.wait(timeout=300)
        assert running(consumer), logged(clog)[-3000:]
        for n in down:
            cluster.start_node(n)
        cluster.wait_brokers()
        cluster.wait_all_in_sync(table_topics())
        back = time.monotonic()
        before_second = ask(table_records, "log-end offsets with the nodes back")
        second = producer_process([m0, m1], log_path=plog2)  # a second replay, after the nodes return
        try:
            assert second.wait(timeout=300) == 0, logged(plog2)[-3000:]
        finally:
            if second.poll() is None:
                stop(second, signal.SIGKILL)
        caught = finish(consumer, group, clog, back)
    first = summary_totals(logged(plog))
    # the first producer gave up on what the cluster could not take: reported, exit code 1
    assert code == 1, logged(plog)[-3000:]
    assert first["sent"] == EVENTS
    assert first["acked"] + first["failed"] + first["unacknowledged"] == EVENTS
    undelivered = first["failed"] + first["unacknowledged"]
    assert undelivered > 0
    assert before_second >= first["acked"]  # every acknowledged event survived the two nodes' loss
    second_totals = summary_totals(logged(plog2))
    assert second_totals == {"sent": EVENTS, "acked": EVENTS, "failed": 0, "unacknowledged": 0}
    on_topics = table_records()
    # every event acknowledged by either replay is on the topics; records the first producer gave
    # up on may be there too (appended by the leader, never acknowledged): at most once more each
    assert EVENTS <= on_topics <= EVENTS + first["acked"] + undelivered
    figures = final_figures(m0, m1)
    exact(figures)  # the store equals the snapshots: nothing acknowledged was lost, no duplicate row
    assert_no_traceback(clog, plog, plog2)
    pipeline.record_reliability(
        "K6. three brokers: two down (below min.insync.replicas=2), then back and a second replay",
        first_sent=first["sent"],
        first_acked=first["acked"],
        first_undelivered=undelivered,
        first_exit_code=code,
        second_sent=second_totals["sent"],
        second_acked=second_totals["acked"],
        written=figures["written"],
        lost=figures["lost"],
        duplicates=figures["duplicates"],
        records_on_topics=on_topics,
        recovery_seconds=caught,
        recovery="nodes back (all in sync) to the consumer caught up after the second replay",
    )


# --- PostgreSQL hung ------------------------------------------------------------------------------


def postgres_pids() -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    pid_file = STATE / "postgres" / "postmaster.pid"
    master = int(pid_file.read_text().splitlines()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def signal_all(pids: list[int], sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_postgres_hung_for_20_seconds_no_commit_past_unwritten_events(
    snapshots, single, monkeypatch, pg_settings, tmp_path
):
    m0, m1 = snapshots
    group = on(single, monkeypatch, pg_settings)
    with streaming(group, [m0, m1], tmp_path, "--rate", "60") as s:
        consumer, producer, clog, plog = s.consumer, s.producer, s.clog, s.plog
        wait_until(
            lambda: pipeline.committed_total(group) > 300, timeout=120, interval=0.1, what="consumer writing"
        )
        pids = postgres_pids()
        signal_all(pids, signal.SIGSTOP)
        try:
            hung = time.monotonic()
            # a batch written just before the hang may still commit; then nothing may
            time.sleep(2)
            frozen = pipeline.committed_total(group)
            while time.monotonic() - hung < 20:
                assert pipeline.committed_total(group) == frozen, "committed past events not written"
                assert running(consumer, producer)
                time.sleep(0.5)
            assert table_records() > frozen  # there was something to write
        finally:
            signal_all(pids, signal.SIGCONT)
        back = time.monotonic()
        with explained(consumer, clog):
            wait_until(
                lambda: pipeline.committed_total(group) > frozen,
                timeout=120,
                interval=0.1,
                what="a commit after the hang",
            )
        recovery = time.monotonic() - back
        assert producer.wait(timeout=300) == 0, logged(plog)[-3000:]
        finish(consumer, group, clog, back)
    totals, figures = delivered_exactly(s, m0, m1)
    pipeline.record_reliability(
        "K7. PostgreSQL hung (SIGSTOP 20 s) while the consumer writes",
        sent=totals["sent"],
        acked=totals["acked"],
        written=figures["written"],
        lost=figures["lost"],
        duplicates=figures["duplicates"],
        committed_during_hang=0,
        hang_seconds=20,
        recovery_seconds=recovery,
        recovery="SIGCONT to the consumer's next commit",
    )
