"""`streamflow dead-letters`: list the dead letters, show one, re-drive them to their source topic.

    streamflow dead-letters list    [--reason SUBSTR] [--topic TOPIC] [--since TIME] [--limit N] [--json]
    streamflow dead-letters show    ID
    streamflow dead-letters redrive [--reason SUBSTR] [--topic TOPIC] [--since TIME] [--limit N] [--dry-run]

A dead letter's ID is its place in the dead-letter topic, PARTITION:OFFSET (e.g. 0:17). --topic is
a source topic (or a table name); --since an ISO 8601 time (UTC without a zone) or a duration back
from now (90s, 30m, 2h, 7d); --limit keeps the oldest N. `redrive` considers exactly what `list`
shows with the same filters, sends each dead letter once (recorded in PostgreSQL, table
streamflow_redrives), and skips those whose payload was cut. Times are UTC.

Exit codes: 0 done, 1 unknown dead letter or bad option value, 4 Kafka or PostgreSQL unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TextIO

import orjson

from streamflow import logs
from streamflow.dead_letters.ledger import Ledger, Redrive
from streamflow.dead_letters.letters import (
    DeadLetter,
    Selection,
    counts,
    iso,
    iso_time,
    parse_since,
    read_letter,
    read_letters,
)
from streamflow.dead_letters.redrive import Outgoing, Redriver, Report
from streamflow.errors import StreamflowError
from streamflow.topics import dead_letter_topic

log = logging.getLogger("streamflow.dead_letters")

REASON_WIDTH = 100
"""Characters of a reason a `list` line shows (--json and `show` give it whole)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamflow dead-letters",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="{list,show,redrive}")

    def filters(q: argparse.ArgumentParser) -> None:
        q.add_argument("--reason", metavar="SUBSTR", help="reason contains SUBSTR (case-insensitive)")
        q.add_argument("--topic", metavar="TOPIC", help="source topic (or table name)")
        q.add_argument("--since", metavar="TIME", help="ISO 8601 time or duration back from now (2h, 7d)")
        q.add_argument("--limit", type=int, metavar="N", help="the oldest N matching dead letters")

    ls = sub.add_parser("list", help="one line per dead letter, then counts by reason")
    filters(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object: dead_letters and counts")
    show = sub.add_parser("show", help="one dead letter whole (JSON), with its redrive state")
    show.add_argument("id", metavar="ID", help="PARTITION:OFFSET in the dead-letter topic")
    rd = sub.add_parser("redrive", help="send dead letters back to their source topic, once")
    filters(rd)
    rd.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    return p


def selection(args) -> Selection:
    if args.limit is not None and args.limit < 0:
        raise StreamflowError("--limit must be 0 or more")
    since = parse_since(args.since) if args.since else None
    return Selection(reason=args.reason, topic=args.topic, since=since, limit=args.limit)


# -- rendering ----------------------------------------------------------------------------------


def redrive_state(row: Redrive | None) -> dict:
    if row is None:
        return {"state": "no"}
    return {
        "state": "yes" if row.state == "done" else "pending",
        "target_topic": row.target_topic,
        "target_partition": row.target_partition,
        "target_offset": row.target_offset,
        "claimed_at": iso_time(row.claimed_at),
        "redriven_at": iso_time(row.redriven_at),
    }


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _source(letter: DeadLetter) -> str:
    s = letter.source
    return f"{s.get('topic')}/{s.get('partition')}/{s.get('offset')}"


def _redrive_of(letter: DeadLetter) -> str:
    """The dead letter this one was re-driven from: its id (its full reference in another topic)."""
    ref = letter.redrive_of
    if not ref:
        return "-"
    topic, _, place = ref.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    return f"{partition}:{place}" if topic == letter.topic else ref


def render_list(letters: list[DeadLetter], matched: int, rows: dict[str, Redrive], out: TextIO) -> None:
    head = ("ID", "TIME", "SOURCE", "KEY", "REDRIVEN", "REDRIVE-OF", "REASON")
    lines = [
        (
            x.id,
            iso(x.timestamp_ms) or "-",
            _source(x),
            _one_line(x.doc.get("key") or "-", 24),
            redrive_state(rows.get(x.id))["state"],
            _redrive_of(x),
            _one_line(x.reason, REASON_WIDTH),
        )
        for x in letters
    ]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(head[:-1])]
    for line in [head, *lines]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] + "\n")
    c = counts(letters)
    out.write("\ncounts by reason:\n")
    for reason, n in c["by_reason"].items():
        out.write(f"{n:>7}  {_one_line(reason, REASON_WIDTH)}\n")
    more = f" (of {matched} matching: --limit)" if matched > len(letters) else ""
    out.write(f"{c['total']:>7}  total{more}\n")


def list_doc(letters: list[DeadLetter], matched: int, rows: dict[str, Redrive], topic: str) -> dict:
    return {
        "topic": topic,
        "dead_letters": [{**x.summary(), "redriven": redrive_state(rows.get(x.id))} for x in letters],
        "counts": {**counts(letters), "matched": matched},
    }


def show_doc(letter: DeadLetter, row: Redrive | None) -> dict:
    doc = {
        "id": letter.id,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "time": iso(letter.timestamp_ms),
        "key": None if letter.key is None else letter.key.decode("utf-8", "replace"),
        "headers": {name: (value or b"").decode("utf-8", "replace") for name, value in letter.headers},
        "dead_letter": letter.doc if letter.readable else None,
        "redrive": redrive_state(row),
    }
    value = letter.doc.get("value") if letter.readable else None
    if isinstance(value, str):
        try:
            doc["payload"] = orjson.loads(value)  # the original event, parsed (when it is JSON)
        except orjson.JSONDecodeError:
            pass
    return doc


def _outgoing(o: Outgoing) -> str:
    key = "null" if o.key is None else repr(o.key.decode("utf-8", "replace"))
    size = "null" if o.value is None else f"{len(o.value)} bytes"
    headers = ", ".join(f"{n}={(v or b'').decode('utf-8', 'replace')}" for n, v in o.headers)
    return f"{o.letter.id} -> {o.topic} key={key} value={size} headers: {headers}"


def _cut(letter: DeadLetter) -> str:
    d = letter.doc
    if d.get("value_truncated"):
        kept = len(letter.original_value() or b"")
        return f"the dead letter kept {kept:,} of the value's {d.get('value_bytes'):,} bytes"
    return f"the dead letter kept {len(letter.key or b''):,} of the key's {d.get('key_bytes'):,} bytes"


def render_redrive(report: Report, out: TextIO) -> None:
    for o, partition, offset in report.sent:
        if report.dry_run:
            out.write(f"would send {_outgoing(o)}\n")
        else:
            out.write(f"sent {o.letter.id} -> {o.topic}/{partition}/{offset}\n")
    for letter in report.truncated:
        out.write(
            f"skipped {letter.id} (truncated: {_cut(letter)}; the whole event is at its source "
            f"{_source(letter)})\n"
        )
    for letter in report.unreadable:
        out.write(f"skipped {letter.id} (unreadable: no source or payload in the dead letter)\n")
    if report.resolved or report.released:
        out.write(
            f"earlier interrupted redrive: {report.resolved} found sent (recorded, not sent again), "
            f"{report.released} found unsent (claims dropped)\n"
        )
    out.write(report.summary() + "\n")


# -- entry point ---------------------------------------------------------------------------------


def run(args, out: TextIO) -> int:
    topic = dead_letter_topic()
    if args.action == "list":
        chosen = selection(args)
        with Ledger(topic) as ledger:
            letters, matched = read_letters(topic, chosen)
            rows = ledger.rows()
        if args.json:
            out.write(json.dumps(list_doc(letters, matched, rows, topic), ensure_ascii=False) + "\n")
        else:
            render_list(letters, matched, rows, out)
        return 0
    if args.action == "show":
        with Ledger(topic) as ledger:
            letter = read_letter(topic, args.id)
            row = ledger.rows().get(letter.id)
        out.write(json.dumps(show_doc(letter, row), indent=2, ensure_ascii=False) + "\n")
        return 0
    redriver = Redriver(topic)
    try:
        report = redriver.run(selection(args), dry_run=args.dry_run)
    finally:
        redriver.close()
    render_redrive(report, out)
    return 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    level = logs.configured_level("WARNING")
    logs.setup(level)
    if level != "DEBUG":
        # kafka-python logs every refused connection at ERROR; the one-line error below says it.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return run(args, out or sys.stdout)
    except StreamflowError as exc:
        print(f"streamflow dead-letters: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
