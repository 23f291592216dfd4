"""`streamflow dead-letters` list / show / redrive, against the real broker and PostgreSQL.

Good and bad events go through the consumer; the bad ones are listed and shown; the registry is
"fixed" (a wider range, one more allowed value: in-process, in the schema object the consumer's
decoder reads); a redrive sends each dead letter once, through crashes before and after the send;
the consumer then writes the fixed events, and one that still fails goes back to the dead-letter
topic with its new reason and ``redrive_of``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import orjson
import pytest

from consumer.dead_letter_queue import dead_letter_value
from streamflow import events, kafka_clients, schema
from streamflow.datagen.generate import generate
from streamflow.dead_letters import ledger as ledger_mod
from streamflow.dead_letters.cli import main
from streamflow.dead_letters.letters import DeadLetter, Selection, iso, parse_id, parse_since
from streamflow.dead_letters.redrive import Redriver, redrive
from streamflow.errors import StreamflowError
from streamflow.topics import dead_letter_topic, topic_of
from tests import pipeline

USERS = 40
FEB = "2024-02-29T00:00:00+00:00"
PAY, SUB = "payments_agg_90d", "subscriptions"


@pytest.fixture(scope="module")
def month_000(tmp_path_factory):
    out = tmp_path_factory.mktemp("dead_letter_snapshots")
    generate(out, users=USERS, seed=5, progress=False)
    return out / "month_000"


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


def summary(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- units -----------------------------------------------------------------------------------------


def test_since_id_and_time_parsing():
    now = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2024-01-31T12:00:00Z") == datetime(2024, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_since("2024-01-31T12:00:00") == datetime(2024, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_since("2024-01-31T13:00:00+01:00") == datetime(2024, 1, 31, 12, tzinfo=timezone.utc)
    for bad in ("yesterday", "2x", "-2h"):
        with pytest.raises(StreamflowError):
            parse_since(bad)
    assert parse_id("3:17") == (3, 17)
    for bad in ("3", "a:b", "3:-1", "3/17"):
        with pytest.raises(StreamflowError):
            parse_id(bad)
    assert iso(1706702400123) == "2024-01-31T12:00:00.123Z"


def record(**kw):
    base = dict(
        topic="t.payments_agg_90d",
        partition=2,
        offset=9,
        timestamp=1706702400000,
        key=b"1234-ABCDE",
        value=b'{"a": 1}',
        headers=[("table", b"payments_agg_90d"), ("event_timestamp", b"x\xff")],
    )
    return SimpleNamespace(**{**base, **kw})


def letter_of(rec, reason="bad") -> DeadLetter:
    """The dead letter the consumer writes for a record (value and key as the queue sends them)."""
    dlq = SimpleNamespace(
        topic="t.dead_letter",
        partition=0,
        offset=5,
        timestamp=1,
        key=rec.key and rec.key[:1024],
        value=dead_letter_value(rec, reason, None),
        headers=[],
    )
    return DeadLetter.from_record(dlq)


def test_dead_letter_keeps_what_a_redrive_needs_exactly():
    rec = record(
        value=b"\xff\xfe not utf-8",
        headers=[
            ("table", b"payments_agg_90d"),
            ("event_timestamp", b"x\xff"),
            ("redrive_of", b"t.dead_letter/1/2"),
        ],
    )
    letter = letter_of(rec)
    assert letter.not_redrivable() is None
    assert letter.original_value() == rec.value and letter.original_key() == rec.key
    assert letter.original_headers() == [("table", b"payments_agg_90d"), ("event_timestamp", b"x\xff")]
    assert letter.redrive_of == "t.dead_letter/1/2"  # a record re-driven before keeps where it came from
    assert letter_of(record(value=None)).original_value() is None  # a tombstone stays one
    assert letter_of(record(value=b"v" * 70_000)).not_redrivable() == "truncated"
    assert letter_of(record(key=b"k" * 2000)).not_redrivable() == "truncated"
    assert letter_of(record(headers=[])).redrive_of is None
    unreadable = DeadLetter.from_record(
        SimpleNamespace(topic="t", partition=0, offset=1, timestamp=1, key=None, value=b"garbage", headers=[])
    )
    assert unreadable.not_redrivable() == "unreadable"


# --- against the broker and PostgreSQL -------------------------------------------------------------


def bad_events(users: list[str]) -> dict[str, tuple[str, bytes, bytes, list]]:
    """user -> (table, key, value, headers) of one bad event each."""

    def pay(user, failed, **extra):
        return orjson.dumps(
            {
                schema.KEY: user,
                "failed_payments_90d": failed,
                schema.EVENT_TIME: FEB,
                schema.EVENT_SNAPSHOT: "month_001",
                **extra,
            }
        )

    def sub(user, contract):
        return orjson.dumps(
            {
                schema.KEY: user,
                "months_active": 4,
                "plan_stream_tv": True,
                "plan_stream_movies": None,
                "contract_type": contract,
                "paperless_billing": False,
                "monthly_fee": 30.0,
                "total_paid": 120.0,
                "net_service": "DSL",
                schema.EVENT_TIME: FEB,
                schema.EVENT_SNAPSHOT: "month_001",
            }
        )

    feb = schema.snapshot_as_of("month_001")
    hp, hs = events.headers(schema.table(PAY), feb), events.headers(schema.table(SUB), feb)
    u = users
    return {
        u[0]: (PAY, u[0].encode(), pay(u[0], 5000), hp),  # out of range [0, 1000]: fixed below
        u[1]: (PAY, u[1].encode(), pay(u[1], 7000), hp),
        u[2]: (PAY, u[2].encode(), pay(u[2], 20000), hp),  # still out of range after the fix
        u[3]: (SUB, u[3].encode(), sub(u[3], "Three year"), hs),  # not one of the choices: fixed below
        u[4]: (SUB, u[4].encode(), sub(u[4], "Three year"), hs),
        u[5]: (PAY, u[5].encode(), b"\xff\xfe not json", []),  # kept as base64; fails again
        u[6]: (PAY, u[6].encode(), pay(u[6], 1, padding="p" * 70_000), hp),  # cut in the dead letter
    }


def send(evts) -> None:
    producer = kafka_clients.producer("test")
    futures = [
        producer.send(topic_of(schema.table(t)), key=k, value=v, headers=h) for t, k, v, h in evts.values()
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    producer.close()


def redriven_records() -> list:
    """The records of the table topics that a redrive sent (they carry ``redrive_of``)."""
    return [
        r
        for t in (PAY, SUB)
        for r in pipeline.read_topic(topic_of(schema.table(t)))
        if "redrive_of" in dict(r.headers)
    ]


def ledger_rows(pg_conn) -> list[tuple]:
    if pg_conn.execute("SELECT to_regclass('streamflow_redrives')").fetchone()[0] is None:
        return []
    return pg_conn.execute(
        "SELECT dlq_partition, dlq_offset, state, target_topic, target_partition, "
        "target_offset FROM streamflow_redrives WHERE dlq_topic = %s ORDER BY 1, 2",
        (dead_letter_topic(),),
    ).fetchall()


def listed(*filters: str) -> dict:
    code, text = cli("list", "--json", *filters)
    assert code == 0, text
    return json.loads(text)


class Crash(Exception):
    """A simulated crash of the redrive process."""


def fix_registry(monkeypatch) -> None:
    """The fix: failed_payments_90d up to 10,000 (was 1,000); contract_type may be 'Three year'."""

    def widened(name, column, **change):
        t = schema.table(name)
        cols = tuple(dataclasses.replace(c, **change) if c.name == column else c for c in t.columns)
        monkeypatch.setitem(schema.TABLES_BY_NAME, name, dataclasses.replace(t, columns=cols))

    widened(PAY, "failed_payments_90d", max=10_000)
    widened(SUB, "contract_type", choices=schema.table(SUB).column("contract_type").choices + ("Three year",))


@dataclasses.dataclass
class DeadLettered:
    """A month replayed, then the bad events sent and consumed: each is a dead letter."""

    group: str
    users: list[str]
    bad: dict
    by_user: dict
    """The listed dead letters, by the user of their event."""


@pytest.fixture
def dead_lettered(month_000, fresh) -> DeadLettered:
    users = pipeline.users_of(month_000)
    pipeline.replay([month_000])
    bad = bad_events(users)
    send(bad)
    stats = pipeline.drain(fresh)
    assert stats["written"] == 6 * USERS and stats["dead_lettered"] == len(bad)
    return DeadLettered(fresh, users, bad, {x["key"]: x for x in listed()["dead_letters"]})


def test_list_shows_one_line_per_dead_letter_and_the_counts_by_reason(dead_lettered):
    bad = dead_lettered.bad
    code, text = cli("list")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["ID", "TIME", "SOURCE", "KEY", "REDRIVEN", "REDRIVE-OF"]
    rows = lines[1 : 1 + len(bad)]
    assert all(row.split()[4:6] == ["no", "-"] and row.split()[1].endswith("Z") for row in rows), text
    assert lines[len(bad) + 1] == "" and lines[len(bad) + 2] == "counts by reason:"
    assert lines[-1].split() == [str(len(bad)), "total"]
    reasons = lines[len(bad) + 3 : -1]
    assert any(line.split()[0] == "2" and "expected one of" in line for line in reasons), text


def test_list_json_gives_each_dead_letters_reason_source_and_state(dead_lettered):
    users, bad, by_user = dead_lettered.users, dead_lettered.bad, dead_lettered.by_user
    doc = listed()
    assert by_user.keys() == set(bad)
    assert doc["counts"]["total"] == len(bad) and sum(doc["counts"]["by_reason"].values()) == len(bad)
    assert (
        by_user[users[0]]["reason"]
        == "field failed_payments_90d: expected an integer from 0 to 1000 (got 5000)"
    )
    assert by_user[users[0]]["source"]["topic"] == topic_of(schema.table(PAY))
    assert by_user[users[6]]["value_truncated"] is True
    assert {x["redriven"]["state"] for x in doc["dead_letters"]} == {"no"}


def test_list_filters_by_reason_topic_limit_and_time(dead_lettered):
    users, bad = dead_lettered.users, dead_lettered.bad
    assert len(listed("--reason", "INTEGER FROM 0 TO 1000 (GOT")["dead_letters"]) == 3
    assert {x["key"] for x in listed("--topic", SUB)["dead_letters"]} == {users[3], users[4]}
    assert len(listed("--topic", topic_of(schema.table(SUB)))["dead_letters"]) == 2
    limited = listed("--limit", "2")
    assert len(limited["dead_letters"]) == 2 and limited["counts"]["matched"] == len(bad)
    assert len(listed("--since", "1h")["dead_letters"]) == len(bad)
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert listed("--since", future)["dead_letters"] == []
    assert cli("list", "--since", "yesterday")[0] == 1


def test_show_gives_one_dead_letter_whole_with_its_payload(dead_lettered):
    users, bad, by_user = dead_lettered.users, dead_lettered.bad, dead_lettered.by_user
    code, text = cli("show", by_user[users[0]]["id"])
    assert code == 0
    shown = json.loads(text)
    assert shown["id"] == by_user[users[0]]["id"] and shown["time"].endswith("Z")
    assert shown["payload"]["failed_payments_90d"] == 5000  # the original event, parsed
    assert shown["dead_letter"]["value"] == bad[users[0]][2].decode()
    assert shown["headers"]["dlq_reason"] == by_user[users[0]]["reason"]
    assert shown["redrive"] == {"state": "no"}
    shown = json.loads(cli("show", by_user[users[5]]["id"])[1])
    assert base64.b64decode(shown["dead_letter"]["value_base64"]) == bad[users[5]][2]
    for unknown in ("0:999999", "99:0", "abc"):
        assert cli("show", unknown)[0] == 1


def test_a_dry_run_says_what_it_would_send_and_sends_and_records_nothing(dead_lettered, pg_conn):
    users, by_user, dlq = dead_lettered.users, dead_lettered.by_user, dead_letter_topic()
    ends = pipeline.end_offsets([topic_of(schema.table(PAY)), topic_of(schema.table(SUB))])
    code, text = cli("redrive", "--dry-run")
    assert code == 0
    assert summary(text) == (
        "sent 0 (dry run: would send 6), skipped (already re-driven) 0, skipped (truncated) 1"
    )
    assert f"would send {by_user[users[0]]['id']} -> {topic_of(schema.table(PAY))} key='{users[0]}'" in text
    assert f"redrive_of={dlq}/" in text and f"event_timestamp={FEB}" in text
    assert f"skipped {by_user[users[6]]['id']} (truncated: the dead letter kept 65,536 of the value's" in text
    assert pipeline.end_offsets(list({tp.topic for tp in ends})) == ends
    assert ledger_rows(pg_conn) == []


def crash_twice(monkeypatch) -> None:
    """Two redrives killed: one after its claims, before the send (SUB); one after the send,
    before the records are marked done (PAY)."""

    def crash(*args, **kwargs):
        raise Crash("killed before sending")

    with monkeypatch.context() as m:
        m.setattr(Redriver, "_send", crash)
        with pytest.raises(Crash):
            redrive(Selection(topic=SUB))
    real_mark_done = ledger_mod.Ledger.mark_done

    def crash_when_recording(self, sent, at):
        if sent:
            raise Crash("killed after sending")
        return real_mark_done(self, sent, at)

    with monkeypatch.context() as m:
        m.setattr(ledger_mod.Ledger, "mark_done", crash_when_recording)
        with pytest.raises(Crash):
            redrive(Selection(topic=PAY))


def test_a_redrive_killed_before_sending_leaves_claims_and_sends_nothing(dead_lettered, monkeypatch, pg_conn):
    def crash(*args, **kwargs):
        raise Crash("killed before sending")

    monkeypatch.setattr(Redriver, "_send", crash)
    with pytest.raises(Crash):
        redrive(Selection(topic=SUB))
    assert [r[2] for r in ledger_rows(pg_conn)] == ["pending", "pending"]
    assert redriven_records() == []


def test_a_redrive_killed_after_sending_leaves_its_claims_pending_and_drops_the_unsent(
    dead_lettered, monkeypatch, pg_conn
):
    crash_twice(monkeypatch)
    rows = ledger_rows(pg_conn)
    assert len(rows) == 4 and {r[2] for r in rows} == {"pending"}  # the unsent SUB claims were dropped
    assert len(redriven_records()) == 4


def test_the_next_redrive_sends_each_dead_letter_once_through_the_crashes(
    dead_lettered, monkeypatch, pg_conn
):
    users, bad, by_user, dlq = (
        dead_lettered.users,
        dead_lettered.bad,
        dead_lettered.by_user,
        dead_letter_topic(),
    )
    crash_twice(monkeypatch)
    # finds the 4 sent (sends them not again), sends the 2 never sent
    code, text = cli("redrive")
    assert code == 0, text
    assert summary(text) == "sent 2, skipped (already re-driven) 4, skipped (truncated) 1"
    assert "earlier interrupted redrive: 4 found sent" in text
    sent = redriven_records()
    by_ref = {dict(r.headers)["redrive_of"].decode(): r for r in sent}
    assert len(sent) == len(by_ref) == 6  # each dead letter once
    rows = ledger_rows(pg_conn)
    assert len(rows) == 6 and {r[2] for r in rows} == {"done"}
    for p, o, _, topic, tp, to in rows:
        record = by_ref[f"{dlq}/{p}/{o}"]
        assert (record.topic, record.partition, record.offset) == (topic, tp, to)
    for user, (table, key, value, headers) in bad.items():
        if user == users[6]:
            continue
        record = by_ref[f"{dlq}/{by_user[user]['id'].replace(':', '/')}"]
        assert (record.topic, record.key, record.value) == (topic_of(schema.table(table)), key, value)
        assert [h for h in record.headers if h[0] != "redrive_of"] == headers  # table, event_timestamp kept


def test_a_second_redrive_sends_nothing_and_the_dead_letters_show_as_redriven(dead_lettered):
    users, by_user = dead_lettered.users, dead_lettered.by_user
    assert cli("redrive")[0] == 0
    code, text = cli("redrive")
    assert summary(text) == "sent 0, skipped (already re-driven) 6, skipped (truncated) 1"
    assert len(redriven_records()) == 6
    states = {x["key"]: x["redriven"] for x in listed()["dead_letters"]}
    assert states[users[6]] == {"state": "no"}
    assert all(
        s["state"] == "yes" and s["redriven_at"].endswith("Z") for u, s in states.items() if u != users[6]
    )
    assert json.loads(cli("show", by_user[users[0]]["id"])[1])["redrive"]["state"] == "yes"


@pytest.fixture
def fixed_and_consumed(dead_lettered, month_000, monkeypatch) -> DeadLettered:
    """The dead letters re-driven, the fix, then the consumer."""
    assert cli("redrive")[0] == 0
    fix_registry(monkeypatch)
    # the fix is this process's registry (a release would change schema.py): the consumer decodes
    # in its own process here, not in write workers that import the registry afresh
    stats = pipeline.drain(dead_lettered.group, write_processes=0)
    assert stats["written"] == 4 and stats["dead_lettered"] == 2
    return dead_lettered


def test_after_the_fix_the_redriven_events_are_written(fixed_and_consumed, month_000):
    users = fixed_and_consumed.users
    online = pipeline.online_state(users[:5])
    assert online[users[0]]["payments_agg_90d_fv:failed_payments_90d"] == 5000
    assert online[users[1]]["payments_agg_90d_fv:failed_payments_90d"] == 7000
    assert online[users[3]]["subs_profile_fv:contract_type"] == "Three year"
    assert online[users[4]]["subs_profile_fv:contract_type"] == "Three year"
    expected = pipeline.expected_online(month_000)
    assert online[users[2]] == expected[users[2]]  # still failing: not written


def test_after_the_fix_the_events_still_refused_are_dead_letters_again_naming_their_first(fixed_and_consumed):
    users, by_user, dlq = fixed_and_consumed.users, fixed_and_consumed.by_user, dead_letter_topic()
    new = {x["key"]: x for x in listed()["dead_letters"] if x["redrive_of"]}
    assert new.keys() == {users[2], users[5]}
    assert (
        new[users[2]]["reason"]
        == "field failed_payments_90d: expected an integer from 0 to 10000 (got 20000)"
    )
    for user in (users[2], users[5]):
        assert new[user]["redrive_of"] == f"{dlq}/{by_user[user]['id'].replace(':', '/')}"
        assert new[user]["redriven"] == {"state": "no"}
    shown = json.loads(cli("show", new[users[2]]["id"])[1])
    assert shown["headers"]["redrive_of"] == new[users[2]]["redrive_of"]  # the dead letter's header too
    line = next(x for x in cli("list")[1].splitlines() if x.startswith(new[users[2]]["id"] + " "))
    assert line.split()[4:6] == ["no", by_user[users[2]]["id"]]


def test_after_the_fix_the_dead_letters_of_the_first_reason_are_not_sent_again(fixed_and_consumed):
    code, text = cli("redrive", "--reason", "from 0 to 1000 (got")
    assert summary(text) == "sent 0, skipped (already re-driven) 3, skipped (truncated) 0"
    assert len(redriven_records()) == 6


@pytest.mark.parametrize("service", ["kafka", "postgresql"])
def test_unreachable_service_is_one_line_and_exit_4(service, pg_settings, kafka_bootstrap):
    env = {**os.environ, "STREAMFLOW_TOPIC_PREFIX": pipeline.fresh_prefix()}
    if service == "kafka":
        env.update(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", STREAMFLOW_KAFKA_BOOTSTRAP_TIMEOUT_MS="2000")
    else:
        env.update(POSTGRES_PORT="1", POSTGRES_PASSWORD="s3cret-pw")
    done = subprocess.run(
        [sys.executable, "-m", "streamflow.cli", "dead-letters", "list"],
        cwd=pipeline.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0], done.stderr[-2000:]
    assert ("Kafka" if service == "kafka" else "PostgreSQL") in lines[0]
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
