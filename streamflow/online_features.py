"""Online retrieval: materialize batch data into the online store, and look users up."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone

from streamflow import config, contract, logs, schema, timefmt
from streamflow.errors import ServiceUnavailable, StreamflowError, first_line

log = logging.getLogger("streamflow.online_features")


def materialize(start: datetime, end: datetime) -> None:
    from streamflow.feature_store import database_errors, get_store

    store = get_store()
    with database_errors("materialize"), logs.plain_stdout():
        store.materialize(start_date=start, end_date=end)


def lookup(user_ids: list[str]) -> list[dict]:
    """Every feature of the churn feature service, per user (None where unknown), as Feast's
    ``get_online_features(...).to_dict()`` gives it (dates as UTC datetimes).

    Read straight from the online store's tables, without importing Feast: one ``UNION ALL`` over
    the service's views for every user (the entity keys and the stored values encoded as
    ``streamflow.feast_stores.value_encoding`` encodes them, as the API reads them).
    """
    import psycopg
    from psycopg import sql

    from streamflow.feast_stores.value_encoding import decode_elements, string_entity_key

    project = config.feast_project()
    tables = list(schema.FEATURE_TABLES)
    dates = [{c.name for c in t.columns if c.kind == "date"} for t in tables]
    keys = {string_entity_key(schema.KEY, u): u for u in user_ids}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {i}::int2, entity_key, names, vals FROM {t} WHERE entity_key = ANY(%(keys)s)").format(
            i=sql.Literal(i), t=sql.Identifier(schema.online_table(project, t.feature_view))
        )
        for i, t in enumerate(tables)
    )
    pg = config.postgres()
    try:
        with psycopg.connect(pg.conninfo, connect_timeout=5) as conn:
            rows = conn.execute(query, {"keys": list(keys)}).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise StreamflowError(
            f"online lookup: {first_line(exc)} in Feast project {project}; run `streamflow apply` first"
        ) from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"online lookup: PostgreSQL at {pg.describe()} is not reachable ({first_line(exc)})"
        ) from None
    found: dict[str, dict] = {u: {} for u in user_ids}
    for i, key, names, vals in rows:
        for name, (field, value) in zip(names.split(","), decode_elements(vals)):
            if field == "unix_timestamp_val" and name in dates[i]:
                value = datetime.fromtimestamp(value, tz=timezone.utc)
            found[keys[bytes(key)]][name] = value
    names = [c.name for t in tables for c in t.columns]
    return [{schema.KEY: u, **{n: found[u].get(n) for n in names}} for u in user_ids]


def _parse_time(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def materialize_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamflow materialize",
        description="Copy the newest batch values in a time range to the online store.",
    )
    parser.add_argument("--start", type=_parse_time, default=_parse_time("2024-01-01"))
    parser.add_argument("--end", type=_parse_time, default=datetime.now(timezone.utc))
    args = parser.parse_args(argv)
    logs.setup()
    try:
        materialize(args.start, args.end)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    print(f"materialized {args.start.isoformat()} .. {args.end.isoformat()}")
    return 0


def check_user_ids(user_ids: list[str]) -> list[str]:
    """The ids given on the command line, each checked by the registry's contract (raises
    :class:`streamflow.contract.Violation` for the first that breaks it)."""
    return [contract.check(schema.KEY_COLUMN, user_id) for user_id in user_ids]


class BadUserId(StreamflowError):
    """A user id given on the command line breaks the contract of ``user_id``."""

    exit_code = 2


def user_ids_command(prog: str, description: str, json_help: str, argv: list[str] | None):
    """The arguments of a command over users (``USER…``, ``--json``), with the logs set up and
    every id checked against the contract (BadUserId naming the first bad one)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("user_ids", nargs="+", metavar="USER")
    parser.add_argument("--json", action="store_true", help=json_help)
    args = parser.parse_args(argv)
    logs.setup()
    try:
        check_user_ids(args.user_ids)
    except contract.Violation as exc:
        raise BadUserId(str(exc)) from None
    return args


def lookup_main(argv: list[str] | None = None) -> int:
    try:
        args = user_ids_command(
            "streamflow lookup",
            "Print users' online features.",
            "one JSON object: the users and their features by view",
            argv,
        )
        rows = lookup(args.user_ids)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    users = [_user_doc(row) for row in rows]
    if args.json:
        print(json.dumps({"users": users}))
        return 0
    for user in users:
        if not user["found"]:
            print(f"{user[schema.KEY]}: not found in the online store")
            continue
        print(f"{user[schema.KEY]}:")
        for view, features in user["features"].items():
            print(f"  {view}")
            for name, value in features.items():
                print(f"    {name:32} {'-' if value is None else value}")
    return 0


def _user_doc(row: dict) -> dict:
    """One user's lookup, features by view, values as the API prints them (days YYYY-MM-DD)."""
    features = {
        table.feature_view: {c.name: timefmt.feature_value(row.get(c.name), c.kind) for c in table.columns}
        for table in schema.FEATURE_TABLES
    }
    found = any(v is not None for view in features.values() for v in view.values())
    return {schema.KEY: row[schema.KEY], "found": found, "features": features}
