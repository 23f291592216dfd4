"""A running count of the dead-letter topic by reason and by source topic, for the API's dashboard.

:class:`DeadLetterTally` reads only what arrived since its last refresh (it remembers the next
offset of every partition), on a thread of its own every ``interval`` seconds, so a request never
waits for Kafka: ``snapshot()`` returns the counts of the newest refresh, with its error when the
newest refresh failed. Each refresh uses a reader of its own, closed afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from kafka import TopicPartition

from streamflow import timefmt
from streamflow.dead_letters.letters import DeadLetter, TopicReader

log = logging.getLogger(__name__)

TOP_REASONS = 10
"""Reasons listed one by one; the rest are summed as "other reasons"."""


class DeadLetterTally:
    def __init__(self, topic: str, interval: float = 10.0):
        self.topic = topic
        self.interval = interval
        self._positions: dict = {}
        self._by_reason: Counter[str] = Counter()
        self._by_topic: Counter[str] = Counter()
        self._newest_ms: int | None = None
        self._error: str | None = None
        self._refreshed_at: datetime | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Count the dead letters that arrived since the last refresh."""
        reader = TopicReader(role="dead-letter-tally")
        try:
            tps = reader.partitions(self.topic)
            starts = {tp: self._positions.get(tp, 0) for tp in tps}
            by_reason: Counter[str] = Counter()
            by_topic: Counter[str] = Counter()
            newest = self._newest_ms
            positions = dict(starts)
            for rec in reader.read(tps, starts=starts):
                letter = DeadLetter.from_record(rec)
                by_reason[letter.reason] += 1
                by_topic[letter.source_topic or "?"] += 1
                positions[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
                newest = max(newest or 0, rec.timestamp)
        except Exception as exc:  # noqa: BLE001 - shown by snapshot(); the next refresh tries again
            with self._lock:
                self._error = " ".join(str(exc).split()) or type(exc).__name__
            return
        finally:
            reader.close()
        with self._lock:
            self._positions.update(positions)
            self._by_reason.update(by_reason)
            self._by_topic.update(by_topic)
            self._newest_ms = newest
            self._error = None
            self._refreshed_at = datetime.now(timezone.utc)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            top = self._by_reason.most_common(TOP_REASONS)
            other = sum(self._by_reason.values()) - sum(n for _, n in top)
            return {
                "topic": self.topic,
                "total": sum(self._by_reason.values()),
                "by_reason": [{"reason": r, "count": n} for r, n in top]
                + ([{"reason": "other reasons", "count": other}] if other else []),
                "by_topic": dict(self._by_topic.most_common()),
                "newest": timefmt.iso_ms(self._newest_ms),
                "refreshed_at": timefmt.iso_utc(self._refreshed_at) if self._refreshed_at else None,
                "error": self._error,
            }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dead-letter-tally", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=40)
            self._thread = None
