"""Burrow-style lag statuses over a sliding window of samples. Pure: no I/O, no clock.

Feed :class:`StatusEvaluator` successive :class:`~streamflow.lag.monitor.GroupLag` samples of one
group (``add``); it keeps, per partition, the last ``window`` samples (and, with
``window_seconds``, only those at most that many seconds older than the newest) and evaluates the
newest one. Times are the samples' ``sampled_at``, never the wall clock, so the evaluation of a
given sequence of samples is deterministic.

Partition status, first rule that applies (W = the partition's samples in the window):

1. **OK** -- the newest sample has no lag (caught up).
2. **NEW** -- the group has no member and, in the newest sample, no committed offset on any
   partition: a group that never ran (or an unknown one, or one whose offsets were deleted). An
   ordinary state, not an alarm: all of the log is unconsumed (lag = log end - log start). A
   partition without commits in a group with members or with commits elsewhere is judged by the
   rules below (a member that never commits is stuck).
3. **UNKNOWN** -- fewer than ``min_samples`` (default 2) samples in W: nothing to compare yet.
4. **REPLAY** -- the committed offset went back between two consecutive samples of W *on
   purpose*: ``streamflow rewind`` reset it after the first of them (its marks are kept as the
   committed offsets of a group of their own, see :func:`~streamflow.lag.marks.marks_group`,
   so the consumers' commits cannot overwrite them). Likewise, a partition that would be WARN
   (falling behind) or UNKNOWN while its oldest unconsumed event was sent by a replay
   (``streamflow produce`` marks its events) or produced before the partition's last rewind (the
   group re-reads it on purpose) is REPLAY. A replay that stops moving is still STALL or STOP.
5. **REWIND** -- the committed offset went back between two consecutive samples of W without
   that mark (including a committed offset that disappeared: deleted or expired offsets make
   the group re-read).
6. **STOP** -- lag > 0 and the committed offset has not moved for longer than
   ``stop_after_seconds``. The clock starts at the first sample that saw the current committed
   offset *with lag > 0* (a lower bound on how long the consumer has been stuck: an idle consumer
   on a quiet topic is not counted as stuck before an event arrives). It is not limited to the
   window: STOP keeps holding while nothing moves. ``stop_after_seconds`` defaults to
   ``window_seconds`` when the window is given in seconds, else to 60 s.
7. **OK** -- some sample of W had no lag (the consumer caught up within the window; Burrow's rule).
8. **STALL** -- the committed offset is the same in every sample of W and the lag is > 0 in all
   of them, but not yet for longer than ``stop_after_seconds``: no progress seen in the window.
   So STALL is "stuck for up to stop_after_seconds", STOP is "stuck for longer".
9. **WARN** -- the committed offset moved within W, but the lag never decreased from one sample
   to the next and is higher in the newest sample than in the oldest: the consumer works but
   falls behind.
10. **OK** otherwise.

Group status: **ERR** if any partition is STALL, STOP or REWIND; else **WARN** if any is WARN;
else **UNKNOWN** if any is UNKNOWN (not enough samples yet); else **REPLAY** if any is REPLAY;
else **NEW** if any is NEW; else **OK** (also for no partitions).

Time to drain: the consume rate of a partition is how far its position (log end - lag) moved
between the oldest and the newest sample of W, per second; ``drain_seconds`` = lag / rate (0 when
caught up, None while the rate is unknown or zero). The group's rate is the sum over partitions,
and its drain time the longest of its partitions'.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for type hints: this module does no I/O and needs no Kafka client
    from streamflow.lag.monitor import GroupLag

DEFAULT_STOP_AFTER_SECONDS = 60.0


class Status(str, Enum):
    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"
    UNKNOWN = "UNKNOWN"
    NEW = "NEW"
    """No commits yet and no member: a group that never ran."""
    REPLAY = "REPLAY"
    """A deliberate replay (reset by ``streamflow lag reset``, or events sent by a replay)."""
    ERR = "ERR"
    """Group status only: some partition is STALL, STOP or REWIND."""

    def __str__(self) -> str:
        return self.value


ERROR_STATUSES = frozenset({Status.STALL, Status.STOP, Status.REWIND})

STATUS_CODES: dict[Status, int] = {
    Status.UNKNOWN: -1,
    Status.OK: 0,
    Status.WARN: 1,
    Status.STALL: 2,
    Status.STOP: 3,
    Status.REWIND: 4,
    Status.NEW: 5,
    Status.REPLAY: 6,
    Status.ERR: 2,
}
"""Numeric codes for metrics. Partition: -1 UNKNOWN, 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND,
5 NEW, 6 REPLAY. Group: -1 UNKNOWN, 0 OK, 1 WARN, 2 ERR, 5 NEW, 6 REPLAY."""


REWIND_CLOCK_SLACK = 5.0
"""Seconds a rewind mark may predate the sample before the rewind (clocks of two hosts)."""


@dataclass(frozen=True)
class PartitionStatus:
    topic: str
    partition: int
    status: Status
    reason: str
    samples: int
    """Samples of this partition in the window."""
    stuck_seconds: float | None = None
    """How long the committed offset has not moved while lag > 0 (None when it is not stuck)."""
    consume_rate: float | None = None
    """Events per second consumed over the window (None with fewer than 2 samples)."""
    drain_seconds: float | None = None
    """lag / consume_rate: 0 when caught up, None while the rate is unknown or zero."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "status": self.status.value,
            "reason": self.reason,
            "samples": self.samples,
            "stuck_seconds": _round(self.stuck_seconds),
            "consume_rate": _round(self.consume_rate),
            "drain_seconds": _round(self.drain_seconds),
        }


@dataclass(frozen=True)
class GroupStatus:
    group: str | None
    status: Status
    partitions: dict[tuple[str, int], PartitionStatus] = field(default_factory=dict)
    samples: int = 0
    """Samples in the window (of the group)."""

    def partition(self, topic: str, partition: int) -> PartitionStatus:
        return self.partitions[(topic, partition)]

    def count(self, status: Status) -> int:
        return sum(1 for p in self.partitions.values() if p.status == status)

    @property
    def consume_rate(self) -> float | None:
        """Events per second the group consumed over the window (None before 2 samples)."""
        rates = [p.consume_rate for p in self.partitions.values()]
        if not rates or any(r is None for r in rates):
            return None
        return sum(r for r in rates if r is not None)

    @property
    def drain_seconds(self) -> float | None:
        """How long until the group caught up at the window's rate: the longest of its partitions
        (0 when all are caught up; None when one with lag has no rate yet or consumes nothing)."""
        drains = [p.drain_seconds for p in self.partitions.values()]
        if any(d is None for d in drains):
            return None
        return max((d for d in drains if d is not None), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "status": self.status.value,
            "samples": self.samples,
            "consume_rate": _round(self.consume_rate),
            "drain_seconds": _round(self.drain_seconds),
            "partitions": [p.to_dict() for _, p in sorted(self.partitions.items())],
        }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def group_status(statuses: list[Status]) -> Status:
    """The group's status from its partitions' (see the module docstring)."""
    if any(s in ERROR_STATUSES for s in statuses):
        return Status.ERR
    if Status.WARN in statuses:
        return Status.WARN
    for status in (Status.UNKNOWN, Status.REPLAY, Status.NEW):
        if status in statuses:
            return status
    return Status.OK


@dataclass(frozen=True)
class _Point:
    t: float
    committed: int | None
    lag: int
    position: int
    """Where the group is: log end - lag."""
    rewound_at: float | None = None
    """When ``streamflow rewind`` last reset the partition (None: never)."""
    replay_backlog: bool = False
    """The oldest unconsumed event was sent by a replay."""


def _went_back(before: int | None, after: int | None) -> bool:
    if before is None:
        return False
    return after is None or after < before


@dataclass
class _Track:
    points: deque
    stuck_since: float | None = None


class StatusEvaluator:
    """Evaluates successive samples of one consumer group (rules in the module docstring).

    ``window``: how many of the newest samples are evaluated (at least 2). ``window_seconds``:
    if given, samples more than that many seconds older than the newest one also leave the
    window (it should exceed the sampling interval). ``stop_after_seconds``: how long the
    committed offset may stay unmoved with lag > 0 before STALL becomes STOP.
    """

    def __init__(
        self,
        window: int = 5,
        *,
        window_seconds: float | None = None,
        stop_after_seconds: float | None = None,
        min_samples: int = 2,
    ):
        if window < 2:
            raise ValueError("the window must hold at least 2 samples")
        if not 1 <= min_samples <= window:
            raise ValueError("min_samples must be between 1 and the window size")
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.window = window
        self.window_seconds = window_seconds
        if stop_after_seconds is None:
            stop_after_seconds = window_seconds if window_seconds is not None else DEFAULT_STOP_AFTER_SECONDS
        if stop_after_seconds <= 0:
            raise ValueError("stop_after_seconds must be positive")
        self.stop_after_seconds = float(stop_after_seconds)
        self.min_samples = min_samples
        self.group: str | None = None
        self._members = 0
        self._has_commits = False
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._times: deque[float] = deque(maxlen=window)
        self._last: GroupStatus = GroupStatus(None, Status.OK)

    def reset(self) -> None:
        self.group = None
        self._tracks.clear()
        self._times.clear()
        self._last = GroupStatus(None, Status.OK)

    # -- feeding -------------------------------------------------------------------------------

    def add(self, sample: GroupLag) -> GroupStatus:
        """Add the next sample of the group and return the evaluation of it."""
        t = sample.sampled_at.timestamp()
        if self.group is not None and sample.group != self.group:
            raise ValueError(f"this evaluator follows group {self.group!r}, not {sample.group!r}")
        if self._times and t < self._times[-1]:
            raise ValueError("samples must be added in time order")
        self.group = sample.group
        self._members = sample.members
        self._has_commits = any(p.committed_offset is not None for p in sample.partitions)
        self._times.append(t)
        self._prune_times(t)
        seen = set()
        for p in sample.partitions:
            key = (p.topic, p.partition)
            seen.add(key)
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track(deque(maxlen=self.window))
            point = _Point(
                t,
                p.committed_offset,
                int(p.lag),
                int(p.log_end_offset) - int(p.lag),
                rewound_at=p.replay_marked_at,
                replay_backlog=_replay_backlog(p),
            )
            prev = track.points[-1] if track.points else None
            if point.lag <= 0:
                track.stuck_since = None
            elif (
                prev is None
                or prev.committed != point.committed
                or prev.lag <= 0
                or track.stuck_since is None
            ):
                track.stuck_since = t
            track.points.append(point)
            self._prune(track.points, t)
        for key in [k for k in self._tracks if k not in seen]:
            del self._tracks[key]  # the partition is gone from the samples (topic deleted or dropped)
        self._last = self._evaluate()
        return self._last

    update = add

    def evaluate(self) -> GroupStatus:
        """The evaluation of the newest sample added (OK with no partitions before any)."""
        return self._last

    def _prune_times(self, now: float) -> None:
        self._prune(self._times, now, key=lambda x: x)

    def _prune(self, points: deque, now: float, key=lambda p: p.t) -> None:
        if self.window_seconds is None:
            return
        while len(points) > 1 and now - key(points[0]) > self.window_seconds:
            points.popleft()

    # -- rules -------------------------------------------------------------------------------

    def _evaluate(self) -> GroupStatus:
        partitions = {key: self._partition(key, track) for key, track in sorted(self._tracks.items())}
        status = group_status([p.status for p in partitions.values()])
        return GroupStatus(self.group, status, partitions, samples=len(self._times))

    def _partition(self, key: tuple[str, int], track: _Track) -> PartitionStatus:
        w = list(track.points)
        last = w[-1]
        n = len(w)
        stuck = last.t - track.stuck_since if track.stuck_since is not None else None
        rate = drain = None
        if n >= 2 and last.t > w[0].t and last.position >= w[0].position:
            rate = (last.position - w[0].position) / (last.t - w[0].t)
        if last.lag <= 0:
            drain = 0.0
        elif rate:
            drain = last.lag / rate

        def result(status: Status, reason: str) -> PartitionStatus:
            return PartitionStatus(key[0], key[1], status, reason, n, stuck, rate, drain)

        if last.lag <= 0:
            return result(Status.OK, "caught up")
        if self._members == 0 and not self._has_commits and all(p.committed is None for p in w):
            return result(Status.NEW, f"no commits yet: {last.lag} events from the log start are unconsumed")
        replay = last.replay_backlog
        if n < self.min_samples:
            if replay:
                return result(Status.REPLAY, "replaying; one sample cannot tell progress yet")
            return result(Status.UNKNOWN, f"{n} sample(s), {self.min_samples} needed to judge")
        for before, after in zip(w, w[1:]):
            if _went_back(before.committed, after.committed):
                went = (
                    f"committed offset went back from {before.committed} to "
                    f"{after.committed if after.committed is not None else 'none'}"
                )
                if after.rewound_at is not None and after.rewound_at >= before.t - REWIND_CLOCK_SLACK:
                    return result(Status.REPLAY, f"{went} by streamflow rewind")
                return result(Status.REWIND, went)
        if stuck is not None and stuck > self.stop_after_seconds:
            return result(
                Status.STOP,
                f"committed offset {_fmt(last.committed)} has not moved for "
                f"{stuck:.0f} s (> {self.stop_after_seconds:g} s) with {last.lag} pending",
            )
        if any(p.lag <= 0 for p in w):
            return result(Status.OK, "caught up within the window")
        if all(p.committed == last.committed for p in w):
            return result(
                Status.STALL,
                f"committed offset {_fmt(last.committed)} has not moved in {n} samples "
                f"({last.t - w[0].t:.0f} s) with {last.lag} pending",
            )
        moved = any(a.committed != b.committed for a, b in zip(w, w[1:]))
        growing = all(b.lag >= a.lag for a, b in zip(w, w[1:])) and last.lag > w[0].lag
        if replay:
            return result(Status.REPLAY, f"replaying: {last.lag} pending")
        if moved and growing:
            return result(
                Status.WARN,
                f"consuming, but the lag grew from {w[0].lag} to {last.lag} "
                f"in {n} samples ({last.t - w[0].t:.0f} s)",
            )
        return result(Status.OK, "consuming")


def _replay_backlog(p) -> bool:
    """The oldest unconsumed event was sent by a replay (``streamflow produce`` marks its events),
    or was produced before the partition's last ``streamflow rewind``: the group re-reads it on
    purpose."""
    if p.replay_id is not None:
        return True
    return (
        p.replay_marked_at is not None
        and p.oldest_produced_at is not None
        and p.oldest_produced_at.timestamp() <= p.replay_marked_at
    )


def _fmt(offset: int | None) -> str:
    return str(offset) if offset is not None else "none (never committed)"
