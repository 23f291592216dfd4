"""The Burrow-style status evaluator, on hand-made samples (no broker)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from streamflow.lag.monitor import GroupLag, PartitionLag, TopicLag
from streamflow.lag.status import Status, StatusEvaluator, group_status

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
TOPIC = "t"


def sample(
    t: float, *parts: tuple[int | None, int], group: str = "g", topic: str = TOPIC, members: int = 0
) -> GroupLag:
    """A sample at T0 + t seconds; each part is (committed offset, log-end offset) of partition i."""
    rows = []
    for i, (committed, end) in enumerate(parts):
        lag = max(0, end - (committed if committed is not None else 0))
        rows.append(PartitionLag(topic, i, committed, 0, end, lag, 0.0 if lag == 0 else 1.0))
    return GroupLag(group, "Stable", T0 + timedelta(seconds=t), [TopicLag(topic, rows)], members=members)


def feed(ev: StatusEvaluator, *samples: GroupLag):
    status = None
    for s in samples:
        status = ev.add(s)
    return status


def p0(status) -> Status:
    return status.partition(TOPIC, 0).status


def test_caught_up_is_ok_even_with_one_sample():
    st = StatusEvaluator(window=3).add(sample(0, (10, 10)))
    assert p0(st) == Status.OK
    assert st.status == Status.OK


def test_one_sample_with_lag_is_unknown():
    st = StatusEvaluator(window=3).add(sample(0, (5, 10)))
    assert p0(st) == Status.UNKNOWN
    assert st.status == Status.UNKNOWN


def test_consuming_with_steady_lag_is_ok():
    st = feed(StatusEvaluator(window=3), sample(0, (5, 10)), sample(1, (10, 15)), sample(2, (15, 18)))
    assert p0(st) == Status.OK
    assert st.status == Status.OK


def test_lag_growing_while_offsets_move_is_warn():
    st = feed(StatusEvaluator(window=3), sample(0, (5, 10)), sample(1, (7, 15)), sample(2, (9, 20)))
    assert p0(st) == Status.WARN
    assert st.status == Status.WARN
    assert "5 to 11" in st.partition(TOPIC, 0).reason


def test_lag_that_dipped_in_the_window_is_not_warn():
    st = feed(StatusEvaluator(window=3), sample(0, (5, 10)), sample(1, (9, 12)), sample(2, (10, 20)))
    assert p0(st) == Status.OK


def test_warn_needs_offsets_to_move():
    # Same committed offset, growing lag: that is STALL, not WARN.
    st = feed(StatusEvaluator(window=3), sample(0, (5, 10)), sample(1, (5, 15)), sample(2, (5, 20)))
    assert p0(st) == Status.STALL


def test_offsets_not_moving_with_lag_is_stall_then_stop():
    ev = StatusEvaluator(window=3, stop_after_seconds=10)
    assert p0(ev.add(sample(0, (5, 10)))) == Status.UNKNOWN
    st = ev.add(sample(4, (5, 10)))
    assert p0(st) == Status.STALL
    assert st.status == Status.ERR
    assert p0(ev.add(sample(8, (5, 12)))) == Status.STALL
    st = ev.add(sample(11, (5, 12)))  # 11 s unmoved > 10 s
    assert p0(st) == Status.STOP
    assert st.status == Status.ERR
    assert st.partition(TOPIC, 0).stuck_seconds == pytest.approx(11)
    # STOP holds beyond the window while nothing moves ...
    assert p0(ev.add(sample(30, (5, 12)))) == Status.STOP
    # ... and clears once the consumer commits again.
    assert p0(ev.add(sample(31, (8, 12)))) == Status.OK


def test_stop_counts_from_when_lag_appeared_not_from_the_last_commit():
    """An idle consumer on a quiet topic is not stopped: the clock starts when events arrive."""
    ev = StatusEvaluator(window=3, stop_after_seconds=10)
    feed(ev, sample(0, (10, 10)), sample(20, (10, 10)), sample(40, (10, 10)))
    st = ev.add(sample(41, (10, 11)))
    assert p0(st) == Status.OK  # caught up within the window
    st = ev.add(sample(45, (10, 11)))
    assert p0(st) == Status.OK  # the window still holds the caught-up sample at 40 s
    st = ev.add(sample(49, (10, 11)))
    assert p0(st) == Status.STALL  # 41..49: unmoved with lag for 8 s
    st = ev.add(sample(52, (10, 11)))
    assert p0(st) == Status.STOP  # 11 s > 10 s


def test_stop_after_defaults_to_window_seconds():
    ev = StatusEvaluator(window=10, window_seconds=5)
    assert ev.stop_after_seconds == 5
    assert StatusEvaluator(window=3).stop_after_seconds == 60
    feed(ev, sample(0, (5, 10)), sample(2, (5, 10)))
    assert p0(ev.evaluate()) == Status.STALL
    assert p0(ev.add(sample(6, (5, 10)))) == Status.STOP


def test_window_seconds_drops_old_samples():
    ev = StatusEvaluator(window=10, window_seconds=5, stop_after_seconds=100)
    # Lag grew early on, then the lag stays flat while offsets move: the old growth leaves the window.
    feed(ev, sample(0, (0, 10)), sample(1, (1, 20)), sample(2, (2, 30)))
    assert p0(ev.evaluate()) == Status.WARN
    st = feed(ev, sample(10, (30, 40)), sample(11, (40, 50)))
    assert st.partition(TOPIC, 0).samples == 2
    assert p0(st) == Status.OK


def test_committed_offset_going_back_is_rewind():
    ev = StatusEvaluator(window=3)
    st = feed(ev, sample(0, (50, 60)), sample(1, (55, 60)), sample(2, (20, 60)))
    assert p0(st) == Status.REWIND
    assert st.status == Status.ERR
    assert "from 55 to 20" in st.partition(TOPIC, 0).reason
    # It stays REWIND while the rewind is in the window, then the usual rules apply again.
    assert p0(ev.add(sample(3, (30, 60)))) == Status.REWIND
    assert p0(ev.add(sample(4, (40, 60)))) == Status.OK


def test_deleted_committed_offset_is_rewind():
    st = feed(StatusEvaluator(window=3), sample(0, (50, 60)), sample(1, (None, 60)))
    assert p0(st) == Status.REWIND


def test_never_committed_with_lag_stalls():
    # a member that holds the partition and never commits is stuck
    st = feed(StatusEvaluator(window=3), sample(0, (None, 60), members=1), sample(1, (None, 60), members=1))
    assert p0(st) == Status.STALL
    assert "never committed" in st.partition(TOPIC, 0).reason
    # so is a partition never committed while the group committed others
    st = feed(StatusEvaluator(window=3), sample(0, (None, 60), (5, 5)), sample(1, (None, 60), (5, 5)))
    assert p0(st) == Status.STALL


def test_group_without_members_or_commits_is_new_not_an_alarm():
    ev = StatusEvaluator(window=3, stop_after_seconds=10)
    st = feed(ev, sample(0, (None, 60), (None, 0)))
    assert (p0(st), st.status) == (Status.NEW, Status.NEW)  # already on the first sample
    st = feed(ev, sample(5, (None, 70), (None, 0)), sample(60, (None, 70), (None, 0)))
    assert (p0(st), st.status) == (Status.NEW, Status.NEW)  # never STALL or STOP
    assert "no commits yet" in st.partition(TOPIC, 0).reason
    assert st.partition(TOPIC, 1).status == Status.OK  # nothing to consume there


def test_group_status_is_the_worst_partition():
    ev = StatusEvaluator(window=3)
    # p0 caught up, p1 lag growing while moving (WARN), p2 stalled (ERR)
    st = feed(ev, sample(0, (10, 10), (0, 10), (3, 10)), sample(1, (20, 20), (5, 20), (3, 10)))
    assert [st.partition(TOPIC, i).status for i in range(3)] == [Status.OK, Status.WARN, Status.STALL]
    assert st.status == Status.ERR
    assert st.count(Status.WARN) == 1
    st = feed(StatusEvaluator(window=3), sample(0, (10, 10), (0, 10)), sample(1, (20, 20), (5, 20)))
    assert st.status == Status.WARN
    assert group_status([]) == Status.OK
    assert group_status([Status.OK, Status.UNKNOWN]) == Status.UNKNOWN
    assert group_status([Status.WARN, Status.REWIND]) == Status.ERR
    assert group_status([Status.STOP]) == Status.ERR


def test_partitions_are_tracked_separately_and_dropped_when_gone():
    ev = StatusEvaluator(window=3)
    feed(ev, sample(0, (5, 10), (5, 10)), sample(1, (5, 10), (7, 10)))
    st = ev.evaluate()
    assert st.partition(TOPIC, 0).status == Status.STALL
    assert st.partition(TOPIC, 1).status == Status.OK
    st = ev.add(sample(2, (5, 10)))
    assert set(st.partitions) == {(TOPIC, 0)}


def test_to_dict_is_json_ready():
    import json

    st = feed(StatusEvaluator(window=3), sample(0, (5, 10)), sample(1, (5, 10)))
    doc = json.loads(json.dumps(st.to_dict()))
    assert doc["status"] == "ERR"
    assert doc["partitions"][0]["status"] == "STALL"
    assert doc["samples"] == 2


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        StatusEvaluator(window=1)
    ev = StatusEvaluator(window=3)
    ev.add(sample(5, (1, 1)))
    with pytest.raises(ValueError, match="time order"):
        ev.add(sample(4, (1, 1)))
    with pytest.raises(ValueError, match="group"):
        ev.add(sample(6, (1, 1), group="other"))


def test_time_to_drain_is_lag_over_the_window_rate():
    ev = StatusEvaluator(window=3)
    st = feed(ev, sample(0, (0, 100), (50, 50)))
    assert st.partition(TOPIC, 0).drain_seconds is None and st.consume_rate is None
    st = feed(ev, sample(10, (40, 100), (50, 50)))  # p0: 40 events in 10 s, 60 pending
    p = st.partition(TOPIC, 0)
    assert p.consume_rate == pytest.approx(4.0) and p.drain_seconds == pytest.approx(15.0)
    assert st.partition(TOPIC, 1).drain_seconds == 0.0  # caught up
    assert st.consume_rate == pytest.approx(4.0) and st.drain_seconds == pytest.approx(15.0)
    st = feed(ev, sample(20, (40, 100), (50, 50)))  # nothing consumed in the last 10 s
    assert st.partition(TOPIC, 0).drain_seconds == pytest.approx(60 / 2.0)  # 40 in 20 s over the window
    st = feed(ev, sample(30, (40, 100), (50, 50)), sample(40, (40, 100), (50, 50)))
    assert st.partition(TOPIC, 0).consume_rate == 0 and st.partition(TOPIC, 0).drain_seconds is None
    assert st.drain_seconds is None  # does not drain at this rate


def test_replay_backlog_and_marked_rewind_are_replay_not_alarms():
    def replaying(s: GroupLag, rewound_at: float | None = None) -> GroupLag:
        for p in s.partitions:
            p.replay_id = "2024-01-31@run"
            p.replay_marked_at = rewound_at
        return s

    ev = StatusEvaluator(window=3)
    st = feed(ev, replaying(sample(0, (0, 100))))
    assert st.status == Status.REPLAY  # one sample, but the backlog is a replay's
    st = feed(ev, replaying(sample(10, (20, 150))))  # moving, lag growing: WARN if it were live
    assert p0(st) == Status.REPLAY and st.status == Status.REPLAY
    st = feed(ev, replaying(sample(20, (20, 150))), replaying(sample(30, (20, 150))))
    assert p0(st) == Status.STALL and st.status == Status.ERR  # a stuck replay is still an alarm
    # a rewind marked after the sample before it: REPLAY; a mark older than that: REWIND
    t_before = (T0 + timedelta(seconds=100)).timestamp()
    ev = StatusEvaluator(window=3)
    st = feed(ev, sample(100, (90, 100)), replaying(sample(110, (10, 100)), rewound_at=t_before + 3))
    assert p0(st) == Status.REPLAY and st.status == Status.REPLAY
    ev = StatusEvaluator(window=3)
    st = feed(ev, sample(100, (90, 100)), replaying(sample(110, (10, 100)), rewound_at=t_before - 3600))
    assert p0(st) == Status.REWIND and st.status == Status.ERR


def test_catching_up_after_a_rewind_is_replay_until_past_the_rewound_events():
    rewound_at = (T0 + timedelta(seconds=50)).timestamp()

    def after_rewind(s: GroupLag, produced_s: float) -> GroupLag:
        for p in s.partitions:
            p.replay_marked_at = rewound_at
            p.oldest_produced_at = T0 + timedelta(seconds=produced_s)
        return s

    ev = StatusEvaluator(window=3)
    # re-reading events produced before the rewind, while new ones arrive faster: REPLAY, not WARN
    st = feed(ev, after_rewind(sample(60, (10, 100)), 5), after_rewind(sample(70, (30, 140)), 8))
    assert p0(st) == Status.REPLAY and st.status == Status.REPLAY
    # past the rewound events (the oldest pending one is newer than the rewind): judged as live
    st = feed(ev, after_rewind(sample(80, (110, 220)), 75))
    assert p0(st) == Status.WARN
