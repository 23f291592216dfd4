"""``streamflow verify [--snapshot-dir DIR] [--view V ...] [--examples N] [--json]``.

Exit 0: every value matches; 1: a mismatch (or a user one side lacks), or a missing table;
3: a snapshot folder that fails validation; 4: PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date
from pathlib import Path

from streamflow import logs, schema
from streamflow.errors import StreamflowError

log = logging.getLogger("streamflow.verify")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _positive(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def build_parser() -> argparse.ArgumentParser:
    views = ", ".join(t.feature_view for t in schema.TABLES)
    parser = argparse.ArgumentParser(
        prog="streamflow verify",
        description="Check that every user's online values equal the newest offline row at or before now "
        "and, with --snapshot-dir, that row equals the snapshot's CSV row. Exit 0 when all match, 1 on any "
        "mismatch, 4 when PostgreSQL cannot be reached.",
    )
    parser.add_argument(
        "--snapshot-dir",
        type=Path,
        metavar="DIR",
        help="a snapshot folder (six CSVs), e.g. data/month_001: the newest one loaded",
    )
    parser.add_argument(
        "--snapshot-as-of",
        type=_day,
        metavar="YYYY-MM-DD",
        help="event day of the snapshot folder (default: from its name, month_NNN)",
    )
    names = [t.feature_view for t in schema.TABLES] + [t.name for t in schema.TABLES]
    parser.add_argument(
        "--view",
        dest="views",
        action="extend",
        nargs="+",
        metavar="V",
        choices=names,
        help=f"only these feature views (or table names); default all: {views}",
    )
    parser.add_argument(
        "--examples",
        type=_positive,
        default=5,
        metavar="N",
        help="examples shown per view and column (default 5)",
    )
    parser.add_argument(
        "--model",
        metavar="ALIAS",
        choices=["champion"],
        help="instead: score every user from the online and the offline row with the model (champion) "
        "and report any user whose two scores differ",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.snapshot_as_of is not None and args.snapshot_dir is None:
        build_parser().error("--snapshot-as-of needs --snapshot-dir")
    logs.setup()
    if args.model is not None:
        return model_parity(args)
    from streamflow.verify import verify

    try:
        report = verify(args.snapshot_dir, args.views, args.examples, snapshot_as_of=args.snapshot_as_of)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    if not report.ok:
        log.error(
            "%s mismatches in %s",
            f"{report.mismatches:,}",
            ", ".join(v.view for v in report.views.values() if v.mismatches),
        )
        return 1
    return 0


def model_parity(args: argparse.Namespace) -> int:
    from streamflow.churn import parity
    from streamflow.churn.scoring import Champion

    try:
        report = parity.check(Champion.load())
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text(args.examples))
    if not report.ok:
        log.error("%s users scored differently online and offline", f"{len(report.mismatches):,}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
