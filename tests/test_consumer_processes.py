"""`streamflow consume --processes N`: the supervisor (with stand-in members, no services) and N real
members of one group against the real broker and PostgreSQL (replay -> consume -> Feast)."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from consumer import cli as consumer_cli
from consumer.supervisor import MemberTag, Supervisor, member_command
from streamflow.datagen.generate import generate
from tests import pipeline

USERS = 150
EVENTS = 2 * 6 * USERS  # two months, six tables

# --- the supervisor, with stand-in members -----------------------------------------------------------

STAND_IN = r"""
import os, signal, sys, time
mode, index, folder = sys.argv[1], sys.argv[2], sys.argv[3]
def mark(what):
    open(os.path.join(folder, f"{what}-{index}"), "a").write(f"{os.getpid()}\n")
mark("started")
if mode.startswith("exit:"):
    sys.exit(int(mode[5:]))
if mode == "crash-once" and not os.path.exists(os.path.join(folder, f"crashed-{index}")):
    mark("crashed")
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "crash-once":
    sys.exit(0)
time.sleep(float(os.environ.get("STAND_IN_SLOW_START", "0")))  # imports, before any handler is set
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
signal.signal(signal.SIGINT, lambda *_: stopped.append(1))
signal.signal(signal.SIGUSR1, lambda *_: mark("usr1"))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})  # as members do
mark("ready")
while not stopped:
    time.sleep(0.02)
mark("stopped")
sys.exit(int(mode[5:]) if mode.startswith("wait:") else 0)
"""


def stand_ins(folder: Path, *modes: str, **options) -> Supervisor:
    """A supervisor of len(modes) stand-in members; member i behaves as modes[i] says."""

    def command(i: int) -> list[str]:
        return [sys.executable, "-c", STAND_IN, modes[i], str(i), str(folder)]

    options = {"restart_initial": 0.05, "restart_max": 0.2, "stable_after": 60.0, "tick": 0.02, **options}
    return Supervisor(command, len(modes), **options)


def marks(folder: Path, what: str, index: int) -> list[int]:
    path = folder / f"{what}-{index}"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for(condition, timeout: float, what) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, naming ``what`` (a text, or
    a function giving one at that moment, e.g. with the log so far)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what() if callable(what) else what}")
        time.sleep(0.1)


def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()), daemon=True)
    thread.start()
    return thread, result


def test_members_that_exit_0_make_exit_0(tmp_path):
    assert stand_ins(tmp_path, "exit:0", "exit:0", "exit:0").run() == 0
    assert all(len(marks(tmp_path, "started", i)) == 1 for i in range(3))


def test_a_crashed_member_is_restarted_and_the_command_still_exits_0(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="consumer.supervisor")
    supervisor = stand_ins(tmp_path, "exit:0", "crash-once")
    assert supervisor.run() == 0
    assert supervisor.restarts == 1
    assert len(marks(tmp_path, "started", 1)) == 2
    killed = marks(tmp_path, "crashed", 1)[0]
    assert f"member 1 (pid {killed}) was killed by SIGKILL" in caplog.text
    assert "restarting it in 0.05 s (failure 1 in a row" in caplog.text


def test_a_member_that_keeps_crashing_is_given_up_and_the_others_are_stopped(tmp_path, caplog):
    supervisor = stand_ins(tmp_path, "wait", "exit:1", max_failures=3)
    assert supervisor.run() == 1
    assert len(marks(tmp_path, "started", 1)) == 3  # started, restarted twice, given up
    assert marks(tmp_path, "stopped", 0), "member 0 was not stopped"
    assert "3 failures in a row" in caplog.text and "giving up" in caplog.text


def test_a_member_that_ran_long_enough_starts_its_failure_count_again(tmp_path, caplog):
    supervisor = stand_ins(tmp_path, "exit:1", max_failures=2, stable_after=0.0)  # every run counts as long
    thread, _ = run_in_thread(supervisor)
    wait_for(lambda: len(marks(tmp_path, "started", 0)) > 3 or not thread.is_alive(), 60, "4 starts")
    supervisor.request_stop(signal.SIGTERM)
    thread.join(timeout=30)
    assert supervisor.restarts >= 3, "given up although each run counted as long enough"
    assert "giving up" not in caplog.text


def test_an_expected_error_of_a_member_stops_the_others_with_its_code(tmp_path, caplog):
    supervisor = stand_ins(tmp_path, "wait", "exit:4")
    assert supervisor.run() == 4
    assert supervisor.restarts == 0 and len(marks(tmp_path, "started", 1)) == 1
    assert marks(tmp_path, "stopped", 0)
    assert "exited with code 4" in caplog.text and "stopping the other members" in caplog.text


def test_a_stop_is_forwarded_to_every_member_and_they_exit_cleanly(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="consumer.supervisor")
    supervisor = stand_ins(tmp_path, "wait", "wait", "wait")
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: all(marks(tmp_path, "ready", i) for i in range(3)), 30, "3 members ready")
    supervisor.request_stop(signal.SIGTERM)
    thread.join(timeout=30)
    assert result == [0]
    assert all(marks(tmp_path, "stopped", i) for i in range(3))
    assert "signal SIGTERM: stopping the members" in caplog.text


def test_sigusr1_is_passed_on_to_every_member(tmp_path):
    supervisor = stand_ins(tmp_path, "wait", "wait")
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: all(marks(tmp_path, "ready", i) for i in range(2)), 30, "2 members ready")
    supervisor.request_stop(signal.SIGUSR1)
    wait_for(lambda: all(marks(tmp_path, "usr1", i) for i in range(2)), 30, "SIGUSR1 in both members")
    assert supervisor.stopping is None  # not a stop
    supervisor.request_stop(signal.SIGTERM)
    thread.join(timeout=30)
    assert result == [0]


def test_a_stop_sent_before_members_accept_signals_is_not_lost(tmp_path, monkeypatch):
    """Members start with SIGTERM blocked: one sent while they import is handled once they are ready
    (without the block, the default action would kill them)."""
    monkeypatch.setenv("STAND_IN_SLOW_START", "1.0")
    supervisor = stand_ins(tmp_path, "wait", "wait")
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: all(marks(tmp_path, "started", i) for i in range(2)), 30, "2 members started")
    supervisor.request_stop(signal.SIGTERM)
    thread.join(timeout=30)
    assert result == [0]
    assert all(marks(tmp_path, "stopped", i) for i in range(2)), "a member did not handle the stop"


def test_a_member_failing_while_stopping_gives_its_code(tmp_path):
    supervisor = stand_ins(tmp_path, "wait", "wait:3")
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: all(marks(tmp_path, "ready", i) for i in range(2)), 30, "2 members ready")
    supervisor.request_stop(signal.SIGINT)
    thread.join(timeout=30)
    assert result == [3]


def test_member_command_gives_member_i_port_plus_i_and_id_dash_i():
    argv = [
        "--group",
        "g",
        "--processes",
        "3",
        "--metrics-port",
        "9108",
        "--instance-id",
        "host-a",
        "--until-drained",
    ]
    args = consumer_cli.parser().parse_args(argv)
    for i in range(3):
        command = member_command(argv, args, i)
        assert command[:3] == [sys.executable, "-m", "consumer.cli"]
        member = consumer_cli.parser().parse_args(command[3:])
        assert (member.member, member.metrics_port, member.instance_id) == (i, 9108 + i, f"host-a-{i}")
        assert (member.group, member.until_drained, member.processes) == ("g", True, 3)
    plain = ["--processes", "2"]
    command = member_command(plain, consumer_cli.parser().parse_args(plain), 1)
    bare = consumer_cli.parser().parse_args(command[3:])
    assert (bare.metrics_port, bare.instance_id, bare.member) == (None, None, 1)


def test_processes_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        consumer_cli.parser().parse_args(["--processes", "0"])
    assert exc.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_member_log_lines_say_which_member():
    record = logging.makeLogRecord({"name": "consumer", "msg": "drained: %s", "args": ("x",)})
    MemberTag(1).filter(record)
    assert record.getMessage() == "[member 1] drained: x"


# --- N members against the real broker and PostgreSQL -------------------------------------------------


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("snapshots")
    generate(out, users=USERS, seed=7, progress=False)
    return out / "month_000", out / "month_001"


def written_by_member(text: str) -> dict[int, int]:
    """member -> events written, from each member's closing 'consumed ..., written N, ...' line."""
    return {int(m): int(w) for m, w in re.findall(r"\[member (\d+)\] consumed \d+, written (\d+),", text)}


def member_pids(text: str, index: int) -> list[int]:
    return [int(p) for p in re.findall(rf"member {index} started \(pid (\d+)\)", text)]


def assert_exact_state(m0: Path, m1: Path) -> None:
    """Online: month_001's values; offline: both months, every row once with its values."""
    assert pipeline.online_state(pipeline.users_of(m1)) == pipeline.expected_online(m1)
    counts = pipeline.offline_check([m0, m1])
    assert counts["lost"] == counts["wrong"] == counts["duplicates"] == counts["unexpected"] == 0, counts


def test_two_processes_until_drained_write_every_event_and_exit_0(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    pipeline.replay([m0, m1])
    log = tmp_path / "consume.log"
    proc = pipeline.consumer_process(
        fresh, "--processes", "2", "--until-drained", "--max-batch", "100", log_path=log
    )
    assert proc.wait(timeout=240) == 0, log.read_text()
    text = log.read_text()
    for i in (0, 1):  # 'drained' needs assigned partitions: each was a member holding some
        assert len(member_pids(text, i)) == 1, text
        assert f"[member {i}] drained: every assigned partition" in text, text
    written = written_by_member(text)
    assert set(written) == {0, 1} and sum(written.values()) >= EVENTS, written
    assert "all 2 members stopped (0 restarts); exit code 0" in text
    assert pipeline.caught_up(fresh)
    assert_exact_state(m0, m1)


def test_sigterm_to_the_supervisor_stops_every_member_cleanly(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    pipeline.replay([m0, m1])
    log = tmp_path / "consume.log"
    proc = pipeline.consumer_process(fresh, "--processes", "2", "--max-batch", "50", log_path=log)
    wait_for(
        lambda: pipeline.group_settled(fresh, 2),
        120,
        lambda: f"2 members holding partitions: {log.read_text()}",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    text = log.read_text()
    assert "signal SIGTERM: stopping the members" in text
    for i in (0, 1):
        pid = member_pids(text, i)[0]
        assert f"[member {i}] signal SIGTERM: finishing the current batch, then leaving the group" in text
        assert re.search(rf"member {i} \(pid {pid}\) exited with code 0 after \d+ s: done", text), text
    assert "exit code 0" in text.splitlines()[-1]
    assert pipeline.group_members(fresh) == 0  # they left the group instead of timing out of it
    pipeline.drain(fresh)  # the rest, from the committed offsets
    assert_exact_state(m0, m1)


def static_members(group: str) -> dict[str, str]:
    """instance id -> member id of the group's members (the broker's view)."""
    members = pipeline.describe_group(group).get("members") or []
    return {m["group_instance_id"]: m["member_id"] for m in members}


def test_a_killed_member_is_restarted_and_rejoins_with_its_instance_id(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    log = tmp_path / "consume.log"
    ids = (f"{fresh}-m-0", f"{fresh}-m-1")
    proc = pipeline.consumer_process(
        fresh, "--processes", "2", "--instance-id", f"{fresh}-m", "--max-batch", "50", log_path=log
    )
    try:
        wait_for(
            lambda: pipeline.group_settled(fresh, 2),
            120,
            lambda: f"2 members holding partitions: {log.read_text()}",
        )
        before = static_members(fresh)
        assert set(before) == set(ids), before
        killed = member_pids(log.read_text(), 1)[0]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(member_pids(log.read_text(), 1)) == 2, 30, "member 1 restarted")
        text = log.read_text()
        assert f"member 1 (pid {killed}) was killed by SIGKILL" in text and "restarting it in 1 s" in text

        def rejoined() -> bool:  # the new process, not the dead one's entry (kept for its session)
            return pipeline.group_settled(fresh, 2) and static_members(fresh).get(ids[1]) not in (
                None,
                before[ids[1]],
            )

        wait_for(rejoined, 120, lambda: f"member 1 back in the group under {ids[1]}: {log.read_text()}")
        assert static_members(fresh)[ids[0]] == before[ids[0]]  # member 0 was left alone
        pipeline.replay([m0, m1])
        wait_for(lambda: pipeline.caught_up(fresh), 120, "the group caught up after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "all 2 members stopped (1 restarts); exit code 0" in text
    assert written_by_member(text)[1] > 0, text  # the restarted member consumed its share
    assert_exact_state(m0, m1)
