"""Re-drive dead letters to their source topic, each once (the design: :mod:`streamflow.dead_letters`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from tqdm import tqdm

from streamflow import kafka_clients, logs
from streamflow.dead_letters import REDRIVE_HEADER
from streamflow.dead_letters.ledger import DONE, PENDING, Ledger, Redrive
from streamflow.dead_letters.letters import DeadLetter, Selection, TopicReader, read_letters
from streamflow.errors import ServiceUnavailable, StreamflowError
from streamflow.topics import dead_letter_topic

log = logging.getLogger(__name__)

CHUNK = 500
"""Dead letters claimed, sent and recorded at a time (a crash leaves at most this many pending)."""

CLOCK_SKEW = timedelta(minutes=1)
"""How far before a claim a re-driven record is looked for (the sender's clock stamps the record)."""


@dataclass(frozen=True)
class Outgoing:
    """What a dead letter becomes when it is re-driven."""

    letter: DeadLetter
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @classmethod
    def of(cls, letter: DeadLetter) -> Outgoing:
        headers = letter.original_headers() + [(REDRIVE_HEADER, letter.ref.encode())]
        assert (
            letter.source_topic is not None
        )  # only a redrivable letter (not_redrivable() None) has an Outgoing
        return cls(letter, letter.source_topic, letter.original_key(), letter.original_value(), headers)


@dataclass
class Report:
    dry_run: bool = False
    sent: list[tuple[Outgoing, int, int]] = field(default_factory=list)
    """Sent and acknowledged: (what, target partition, target offset); with --dry-run, partition
    and offset are -1 (what would be sent)."""
    already: list[DeadLetter] = field(default_factory=list)
    truncated: list[DeadLetter] = field(default_factory=list)
    unreadable: list[DeadLetter] = field(default_factory=list)
    resolved: int = 0
    """Pending claims of an earlier run found sent (marked done, not sent again)."""
    released: int = 0
    """Pending claims of an earlier run found not sent (claimed and sent again if selected)."""

    def summary(self) -> str:
        sent = f"sent 0 (dry run: would send {len(self.sent)})" if self.dry_run else f"sent {len(self.sent)}"
        line = (
            f"{sent}, skipped (already re-driven) {len(self.already)}, "
            f"skipped (truncated) {len(self.truncated)}"
        )
        if self.unreadable:
            line += f", skipped (unreadable) {len(self.unreadable)}"
        return line


class Redriver:
    """One redrive run over one dead-letter topic."""

    def __init__(self, dlq_topic: str | None = None, kafka: kafka_clients.KafkaSettings | None = None):
        self.dlq_topic = dlq_topic or dead_letter_topic()
        self.kafka = kafka or kafka_clients.settings()
        self.reader = TopicReader(kafka=self.kafka)

    def close(self) -> None:
        self.reader.close()

    def run(self, selection: Selection = Selection(), dry_run: bool = False) -> Report:
        report = Report(dry_run=dry_run)
        with Ledger(self.dlq_topic, writable=not dry_run) as ledger:
            letters, _ = read_letters(self.dlq_topic, selection, self.reader)
            found, unsent = self.resolve(ledger.rows(PENDING))
            report.resolved, report.released = len(found), len(unsent)
            if not dry_run:
                ledger.mark_done(
                    [(p, o, tp, to) for (p, o), (tp, to) in found.items()], datetime.now(timezone.utc)
                )
                ledger.release(unsent)
            rows = ledger.rows()
            done = {k for k, r in rows.items() if r.state == DONE} | {f"{p}:{o}" for p, o in found}
            if not dry_run:
                done |= set(rows)  # every row left is done (pending ones were resolved above)
            todo = []
            for letter in letters:
                why = letter.not_redrivable()
                if letter.id in done:
                    report.already.append(letter)
                elif why == "truncated":
                    report.truncated.append(letter)
                elif why is not None:
                    report.unreadable.append(letter)
                else:
                    todo.append(Outgoing.of(letter))
            self._check_topics({o.topic for o in todo})
            if dry_run:
                report.sent = [(o, -1, -1) for o in todo]
                return report
            self._send_all(ledger, todo, report)
        return report

    def resolve(
        self, pending: dict[str, Redrive]
    ) -> tuple[dict[tuple[int, int], tuple[int, int]], list[tuple[int, int]]]:
        """Pending claims: those whose record is in their target topic (-> its partition and offset),
        and those never sent."""
        found: dict[tuple[int, int], tuple[int, int]] = {}
        by_topic: dict[str, list[Redrive]] = {}
        for row in pending.values():
            by_topic.setdefault(row.target_topic, []).append(row)
        for topic, rows in by_topic.items():
            wanted = {
                f"{self.dlq_topic}/{r.dlq_partition}/{r.dlq_offset}".encode(): (r.dlq_partition, r.dlq_offset)
                for r in rows
            }
            since = min(r.claimed_at for r in rows) - CLOCK_SKEW
            tps = self.reader.partitions(topic)
            for rec in self.reader.read(tps, since_ms=int(since.timestamp() * 1000)):
                for name, value in rec.headers or ():
                    if name == REDRIVE_HEADER and value in wanted:
                        found.setdefault(wanted[value], (rec.partition, rec.offset))
            hits = sum(1 for k in wanted.values() if k in found)
            log.info(
                "%d pending redrive claims on %s: %d found sent, %d never sent",
                len(rows),
                topic,
                hits,
                len(rows) - hits,
            )
        unsent = [
            (r.dlq_partition, r.dlq_offset)
            for r in pending.values()
            if (r.dlq_partition, r.dlq_offset) not in found
        ]
        return found, unsent

    def _check_topics(self, topics: set[str]) -> None:
        for topic in sorted(topics):
            if not self.reader.partitions(topic):
                raise StreamflowError(
                    f"source topic {topic} does not exist on Kafka at "
                    f"{self.kafka.bootstrap_servers}: nothing re-driven (leave its dead "
                    f"letters out with --topic)"
                )

    def _send_all(self, ledger: Ledger, todo: list[Outgoing], report: Report) -> None:
        if not todo:
            return
        producer = kafka_clients.producer("redrive", kafka=self.kafka)
        bar = tqdm(total=len(todo), unit="event", desc="redrive", disable=not logs.progress_enabled())
        try:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                claimed = ledger.claim(
                    [(o.letter.partition, o.letter.offset, o.topic) for o in chunk],
                    datetime.now(timezone.utc),
                )
                report.already += [o.letter for o in chunk if o.letter.id not in claimed]
                mine = [o for o in chunk if o.letter.id in claimed]
                sent, failed = self._send(producer, mine)
                ledger.mark_done(
                    [(o.letter.partition, o.letter.offset, p, off) for o, p, off in sent],
                    datetime.now(timezone.utc),
                )
                report.sent += sent
                bar.update(len(chunk))
                if failed:
                    raise ServiceUnavailable(
                        f"{len(failed)} re-driven events were not acknowledged by Kafka at "
                        f"{self.kafka.bootstrap_servers} ({failed[0]}); {len(report.sent)} were sent; "
                        f"the others stay claimed as pending: the next redrive checks whether they arrived"
                    )
        finally:
            bar.close()
            kafka_clients.close_quietly(producer, timeout=10)

    def _send(self, producer, chunk: list[Outgoing]) -> tuple[list[tuple[Outgoing, int, int]], list[str]]:
        """Send and flush; returns (acknowledged with partition and offset, errors)."""
        futures, failed = [], []
        for out in chunk:
            try:
                future = producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
                futures.append((out, future))
            except Exception as exc:  # noqa: BLE001 - e.g. no metadata within max_block_ms: stays pending
                failed.append(f"{type(exc).__name__}: {exc}")
        try:
            producer.flush()
        except Exception as exc:  # noqa: BLE001 - the futures below tell which were acknowledged
            log.warning("flushing the redrive producer: %s", exc)
        sent = []
        for out, future in futures:
            if future.succeeded():
                sent.append((out, future.value.partition, future.value.offset))
            else:
                failed.append(f"{type(future.exception).__name__}: {future.exception}")
        return sent, failed


def redrive(
    selection: Selection = Selection(), dry_run: bool = False, dlq_topic: str | None = None
) -> Report:
    """One redrive run (the CLI's ``redrive``)."""
    redriver = Redriver(dlq_topic)
    try:
        return redriver.run(selection, dry_run=dry_run)
    finally:
        redriver.close()
