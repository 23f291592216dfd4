"""The batch loader against the real PostgreSQL: validated snapshot folders in, warehouse tables out.

Snapshot folders are written here from the registry (a few rows per file), not by the data
generator, so these tests only depend on the registry, the validator and the loader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from psycopg import sql

from streamflow import config, schema, warehouse
from streamflow.batch import load, validate
from streamflow.errors import DataValidationError, ServiceUnavailable

N = 12  # users per snapshot
JAN = datetime(2024, 1, 31, tzinfo=timezone.utc)
FEB = datetime(2024, 2, 29, tzinfo=timezone.utc)


# --- snapshot folders written from the registry ---------------------------------------------------


def user_id(i: int) -> str:
    letters = "".join(chr(ord("A") + (i * 7 + k * 3) % 26) for k in range(5))
    return f"{1000 + i:04d}-{letters}"


def cell(column: schema.Column, i: int, month: int) -> str:
    """A valid value of the column for user i in snapshot `month` (numbers drift by month)."""
    if column.kind == "category":
        return column.choices[i % len(column.choices)] if column.choices else f"text {i}"
    if column.kind == "boolean":
        return "True" if (i + len(column.name)) % 2 else "False"
    if column.kind == "date":
        return (date(2022, 1, 1) + timedelta(days=i)).isoformat()
    lo = int(column.min or 0)
    if column.kind == "integer":
        return str(lo + (i * 7 + month) % 10)
    # full precision, e.g. 29.14104464084511
    return repr(lo + (i + 1) * 1.2345678901234567 + month * 0.1 + 1 / (i + 3))


def snapshot_rows(month: int = 0, n: int = N) -> dict[str, list[list[str]]]:
    """Rows (as strings, in header order) of every table of one snapshot."""
    rows = {}
    for table in schema.TABLES:
        table_rows = []
        for i in range(n):
            row = {schema.KEY: user_id(i)}
            row.update({c.name: cell(c, i, month) for c in table.columns})
            if row.get("net_service") == "No":  # the real files' quirk: plan flags unknown
                row["plan_stream_tv"] = row["plan_stream_movies"] = ""
            table_rows.append([row[name] for name in table.header])
        rows[table.name] = table_rows
    return rows


def csv_bytes(header: list[str], rows: list[list[str]], newline: str = "\n") -> bytes:
    return "".join(",".join(r) + newline for r in [header, *rows]).encode("utf-8")


def write_snapshot(folder: Path, month: int = 0, n: int = N) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in snapshot_rows(month, n).items():
        table = schema.table(name)
        (folder / table.file).write_bytes(csv_bytes(table.header, rows))
    return folder


@pytest.fixture()
def month_000(tmp_path) -> Path:
    return write_snapshot(tmp_path / "month_000", month=0)


@pytest.fixture()
def month_001(tmp_path) -> Path:
    return write_snapshot(tmp_path / "month_001", month=1)


# --- the database --------------------------------------------------------------------------------


# Other test modules (and other checkouts' runs) share the streamflow_test database; these
# tests keep their warehouse tables in a schema of their own, through search_path: SET on
# pg_conn, PGOPTIONS for the connections the loader and its CLI open themselves.
PRIVATE_SCHEMA = f"loader_test_{os.getpid()}"


@pytest.fixture(scope="module")
def private_schema(pg_settings):
    import psycopg

    with psycopg.connect(pg_settings.conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(PRIVATE_SCHEMA)))
        yield PRIVATE_SCHEMA
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(PRIVATE_SCHEMA)))


@pytest.fixture(autouse=True)
def clean_warehouse(pg_conn, private_schema, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={private_schema}")
    pg_conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(private_schema)))
    warehouse.drop_schema(pg_conn)
    yield


def dump(conn) -> dict[str, list[tuple] | None]:
    """Every warehouse table's full contents (None for a table that does not exist)."""
    out = {}
    for table in schema.TABLES:
        for name, order in ((table.base_table, "user_id"), (table.snapshot_table, "user_id, as_of")):
            exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0]
            out[name] = (
                conn.execute(
                    sql.SQL("SELECT * FROM {} ORDER BY " + order).format(sql.Identifier(name))
                ).fetchall()
                if exists
                else None
            )
    return out


def rows_of(conn, query: str, *params) -> list[dict]:
    cur = conn.cursor()
    cur.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# --- good loads ----------------------------------------------------------------------------------


def test_good_load_writes_typed_rows(pg_conn, month_000):
    counts = load.load_snapshot(month_000, conn=pg_conn)

    assert counts == {t.name: N for t in schema.TABLES}
    for table in schema.TABLES:
        assert pg_conn.execute(f"SELECT count(*) FROM {table.base_table}").fetchone()[0] == N
        assert pg_conn.execute(f"SELECT count(*) FROM {table.snapshot_table}").fetchone()[0] == N

    expected = snapshot_rows(0)
    subs = rows_of(pg_conn, "SELECT * FROM subscriptions_profile_snapshots ORDER BY user_id")
    want = sorted(expected["subscriptions"])
    for got, raw in zip(subs, want):
        row = dict(zip(schema.table("subscriptions").header, raw))
        assert got["user_id"] == row["user_id"]
        assert got["as_of"] == JAN and got["snapshot"] == "month_000"
        assert got["months_active"] == int(row["months_active"])
        assert got["monthly_fee"] == float(row["monthly_fee"])  # full precision, exactly
        assert got["total_paid"] == float(row["total_paid"])
        assert got["paperless_billing"] is (row["paperless_billing"] == "True")
        if row["net_service"] == "No":
            assert got["plan_stream_tv"] is None and got["plan_stream_movies"] is None
        else:
            assert got["plan_stream_tv"] is (row["plan_stream_tv"] == "True")
    assert any(r["net_service"] == "No" for r in subs)
    assert any(r["plan_stream_tv"] is True for r in subs)
    assert any(r["plan_stream_tv"] is False for r in subs)

    users = rows_of(pg_conn, "SELECT * FROM users ORDER BY user_id")
    assert users[0]["signup_date"] == date(2022, 1, 1)
    assert isinstance(users[0]["user_is_senior"], bool)
    assert users[0]["as_of"] == JAN

    base = rows_of(pg_conn, "SELECT * FROM subscriptions ORDER BY user_id")
    assert all(r["add_on_security"] is None and r["add_on_tech_support"] is None for r in base)
    assert [r["monthly_fee"] for r in base] == [r["monthly_fee"] for r in subs]

    types = dict(
        pg_conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'usage_agg_30d_snapshots'::regclass AND attnum > 0"
        ).fetchall()
    )
    assert types["watch_hours_30d"] == "double precision"
    assert types["skips_7d"] == "bigint"
    assert types["as_of"] == "timestamp with time zone"


def test_reload_changes_nothing(pg_conn, month_000):
    first = load.load_snapshot(month_000, conn=pg_conn)
    before = dump(pg_conn)

    second = load.load_snapshot(month_000, conn=pg_conn)

    assert second == first
    assert dump(pg_conn) == before  # values and loaded_at identical


def test_second_snapshot_adds_history_and_moves_base_forward(pg_conn, month_000, month_001):
    load.load_snapshot(month_000, conn=pg_conn)
    load.load_snapshot(month_001, conn=pg_conn)

    for table in schema.TABLES:
        assert pg_conn.execute(f"SELECT count(*) FROM {table.snapshot_table}").fetchone()[0] == 2 * N
        assert pg_conn.execute(f"SELECT count(*) FROM {table.base_table}").fetchone()[0] == N
        as_ofs = pg_conn.execute(f"SELECT DISTINCT as_of FROM {table.base_table}").fetchall()
        assert as_ofs == [(FEB,)]
    feb = snapshot_rows(1)["usage_agg_30d"]
    base = dict(pg_conn.execute("SELECT user_id, watch_hours_30d FROM usage_agg_30d").fetchall())
    assert base == {r[0]: float(r[1]) for r in feb}
    history = pg_conn.execute(
        "SELECT as_of, snapshot, count(*) FROM usage_agg_30d_snapshots GROUP BY 1, 2 ORDER BY 1"
    ).fetchall()
    assert history == [(JAN, "month_000", N), (FEB, "month_001", N)]


def test_older_snapshot_after_newer_keeps_base_on_newer(pg_conn, month_000, month_001):
    load.load_snapshot(month_001, conn=pg_conn)
    base_after_feb = {t.base_table: dump(pg_conn)[t.base_table] for t in schema.TABLES}

    load.load_snapshot(month_000, conn=pg_conn)

    after = dump(pg_conn)
    for table in schema.TABLES:
        assert after[table.base_table] == base_after_feb[table.base_table]
        assert len(after[table.snapshot_table]) == 2 * N


def test_explicit_snapshot_id_and_as_of(pg_conn, tmp_path):
    folder = write_snapshot(tmp_path / "export")
    load.load_snapshot(folder, snapshot_id="march", as_of=date(2024, 3, 31), conn=pg_conn)
    assert pg_conn.execute("SELECT DISTINCT as_of, snapshot FROM labels_snapshots").fetchall() == [
        (datetime(2024, 3, 31, tzinfo=timezone.utc), "march")
    ]


def test_bom_crlf_and_quoted_values_load_like_plain_csv(pg_conn, tmp_path, month_000):
    load.load_snapshot(month_000, conn=pg_conn)
    plain = dump(pg_conn)
    warehouse.drop_schema(pg_conn)

    folder = tmp_path / "quoted" / "month_000"
    folder.mkdir(parents=True)
    for name, rows in snapshot_rows(0).items():
        table = schema.table(name)
        quoted = [[f'"{v}"' if v and not v[0].isdigit() else v for v in r] for r in rows]
        data = b"\xef\xbb\xbf" + csv_bytes(table.header, quoted, newline="\r\n")
        (folder / table.file).write_bytes(data)
    load.load_snapshot(folder, conn=pg_conn)

    def strip(d):
        return {k: [r[:-1] if k.endswith("snapshots") else r for r in v] for k, v in d.items()}

    assert strip(dump(pg_conn)) == strip(plain)  # same values (loaded_at aside)


def test_read_table_returns_registry_dtypes(month_000):
    for table in schema.TABLES:
        frame = validate.read_table(month_000 / table.file, table)
        assert list(frame.columns) == table.header
        assert len(frame) == N
        for column in table.columns:
            assert str(frame[column.name].dtype) == str(pd.Series(dtype=column.pandas_dtype).dtype)
    subs = validate.read_table(month_000 / "subscriptions.csv", "subscriptions")
    no = subs["net_service"] == "No"
    assert subs.loc[no, "plan_stream_tv"].isna().all() and subs.loc[~no, "plan_stream_tv"].notna().all()
    raw = dict(zip(schema.table("subscriptions").header, snapshot_rows(0)["subscriptions"][0]))
    assert subs["monthly_fee"].iloc[0] == float(raw["monthly_fee"])


# --- bad files -----------------------------------------------------------------------------------


def edit_cell(table: str, row: int, column: str, value: str):
    """A mutation: set one cell (row is 0-based; it sits on file line row + 2)."""

    def mutate(rows, header):
        rows[table][row][header[table].index(column)] = value

    return mutate


def drop_column(table: str, column: str):
    def mutate(rows, header):
        i = header[table].index(column)
        header[table] = header[table][:i] + header[table][i + 1 :]
        rows[table] = [r[:i] + r[i + 1 :] for r in rows[table]]

    return mutate


def add_column(table: str, column: str):
    def mutate(rows, header):
        header[table] = header[table] + [column]
        rows[table] = [r + ["1"] for r in rows[table]]

    return mutate


def swap_columns(table: str, a: str, b: str):
    def mutate(rows, header):
        i, j = header[table].index(a), header[table].index(b)
        for r in [header[table], *rows[table]]:
            r[i], r[j] = r[j], r[i]

    return mutate


def drop_row(table: str, row: int):
    def mutate(rows, header):
        del rows[table][row]

    return mutate


def add_field(table: str, row: int):
    def mutate(rows, header):
        rows[table][row] = rows[table][row] + ["7"]

    return mutate


def drop_field(table: str, row: int):
    def mutate(rows, header):
        rows[table][row] = rows[table][row][:-1]

    return mutate


def write_bad_snapshot(folder: Path, mutate=None, raw: dict[str, bytes] | None = None) -> Path:
    rows = snapshot_rows(1)
    header = {t.name: list(t.header) for t in schema.TABLES}
    if mutate:
        mutate(rows, header)
    folder.mkdir(parents=True)
    for table in schema.TABLES:
        data = csv_bytes(header[table.name], rows[table.name])
        if raw and table.name in raw:
            data = raw[table.name]
        (folder / table.file).write_bytes(data)
    return folder


def _users_with_latin1() -> bytes:
    rows = snapshot_rows(1)["users"]
    data = csv_bytes(schema.table("users").header, rows)
    lines = data.split(b"\n")
    lines[3] = lines[3].replace(b"Female", b"F\xe9male").replace(b"Male", b"M\xe2le")
    return b"\n".join(lines)


BAD_FILES = {
    # name: (mutation, raw file bytes, file, expected fragments of the message)
    "missing column": (
        drop_column("subscriptions", "net_service"),
        None,
        "subscriptions.csv",
        ["line 1", "column net_service", "missing from the header"],
    ),
    "extra column": (
        add_column("usage_agg_30d", "bonus_points"),
        None,
        "usage_agg_30d.csv",
        ["line 1", "column bonus_points", "unexpected column"],
    ),
    "misordered columns": (
        swap_columns("support_agg_90d", "support_tickets_90d", "ticket_avg_resolution_hrs_90d"),
        None,
        "support_agg_90d.csv",
        ["line 1", "column ticket_avg_resolution_hrs_90d", "out of order"],
    ),
    "bad bool": (
        edit_cell("users", 2, "user_is_senior", "yes"),
        None,
        "users.csv",
        ["line 4", "column user_is_senior", "True or False", "(got 'yes')"],
    ),
    "bad int": (
        edit_cell("payments_agg_90d", 5, "failed_payments_90d", "1.5"),
        None,
        "payments_agg_90d.csv",
        ["line 7", "column failed_payments_90d", "expected an integer", "(got '1.5')"],
    ),
    "NaN float": (
        edit_cell("usage_agg_30d", 0, "watch_hours_30d", "NaN"),
        None,
        "usage_agg_30d.csv",
        ["line 2", "column watch_hours_30d", "expected a finite number", "(got 'NaN')"],
    ),
    "inf float": (
        edit_cell("support_agg_90d", 3, "ticket_avg_resolution_hrs_90d", "inf"),
        None,
        "support_agg_90d.csv",
        ["line 5", "column ticket_avg_resolution_hrs_90d", "expected a finite number"],
    ),
    "float underflow": (
        edit_cell("usage_agg_30d", 2, "avg_session_mins_7d", "1e-400"),
        None,
        "usage_agg_30d.csv",
        [
            "line 4",
            "column avg_session_mins_7d",
            "expected a finite number from 0 to 10080",
            "(got '1e-400')",
        ],
    ),
    "out of range": (
        edit_cell("subscriptions", 4, "months_active", "5000"),
        None,
        "subscriptions.csv",
        ["line 6", "column months_active", "expected an integer from 0 to 1200", "(got '5000')"],
    ),
    "negative": (
        edit_cell("subscriptions", 1, "monthly_fee", "-0.5"),
        None,
        "subscriptions.csv",
        ["line 3", "column monthly_fee", "expected a finite number from 0 to 10000"],
    ),
    "null in non-nullable": (
        edit_cell("support_agg_90d", 7, "ticket_avg_resolution_hrs_90d", ""),
        None,
        "support_agg_90d.csv",
        ["line 9", "column ticket_avg_resolution_hrs_90d", "must not be null"],
    ),
    "bad choice": (
        edit_cell("subscriptions", 0, "contract_type", "Monthly"),
        None,
        "subscriptions.csv",
        ["line 2", "column contract_type", "expected one of", "(got 'Monthly')"],
    ),
    "bad date": (
        edit_cell("users", 1, "signup_date", "2023-02-30"),
        None,
        "users.csv",
        ["line 3", "column signup_date", "expected a date YYYY-MM-DD"],
    ),
    "bad user_id": (
        edit_cell("labels", 6, "user_id", "12345-abcde"),
        None,
        "labels.csv",
        ["line 8", "column user_id", "expected a user id", "(got '12345-abcde')"],
    ),
    "duplicate key": (
        edit_cell("labels", 5, "user_id", user_id(2)),
        None,
        "labels.csv",
        ["line 7", "column user_id", "duplicate key", "also on line 4"],
    ),
    "short row": (
        drop_field("payments_agg_90d", 3),
        None,
        "payments_agg_90d.csv",
        ["line 5", "column failed_payments_90d", "only 1 of the 2 fields"],
    ),
    "long row": (
        add_field("usage_agg_30d", 8),
        None,
        "usage_agg_30d.csv",
        ["line 10", "column rebuffer_events_7d", "7 fields, not 6"],
    ),
    "blank line": (
        None,
        {
            "labels": b"user_id,churn_label\n"
            + b"\n".join(f"{user_id(i)},True".encode() for i in range(N)).replace(b"\n", b"\n\n", 1)
            + b"\n"
        },
        "labels.csv",
        ["line 3", "column user_id", "empty line"],
    ),
    "quoted file, short row": (
        None,
        {
            "labels": b"user_id,churn_label\n"
            + b"".join(f'"{user_id(i)}",True\n'.encode() for i in range(N - 1))
            + b'"oops"\n'
        },
        "labels.csv",
        ["line 13", "column churn_label", "only 1 of the 2 fields"],
    ),
    "empty file": (
        None,
        {"support_agg_90d": b""},
        "support_agg_90d.csv",
        ["line 1", "column user_id", "empty"],
    ),
    "header only": (
        None,
        {"labels": b"user_id,churn_label\n"},
        "labels.csv",
        ["line 2", "column user_id", "no rows"],
    ),
    "non-UTF-8 bytes": (
        None,
        {"users": _users_with_latin1()},
        "users.csv",
        ["line 4", "column user_gender", "not valid UTF-8", "(got 'F\\xe9male')"],
    ),
    "user not in users.csv": (
        edit_cell("labels", 9, "user_id", "9999-ZZZZZ"),
        None,
        "labels.csv",
        ["line 11", "column user_id", "not in users.csv", "(got '9999-ZZZZZ')"],
    ),
    "user missing from a file": (
        drop_row("payments_agg_90d", 10),
        None,
        "payments_agg_90d.csv",
        ["column user_id", f"no row for user '{user_id(10)}'", "line 12"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_rejected_and_nothing_changes(pg_conn, tmp_path, month_000, case):
    mutate, raw, file, fragments = BAD_FILES[case]
    load.load_snapshot(month_000, conn=pg_conn)
    before = dump(pg_conn)
    bad = write_bad_snapshot(tmp_path / "bad" / "month_001", mutate, raw)

    with pytest.raises(DataValidationError) as info:
        load.load_snapshot(bad, conn=pg_conn)

    message = str(info.value)
    assert str(bad / file) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert dump(pg_conn) == before


def test_bad_first_load_creates_nothing(pg_conn, tmp_path):
    bad = write_bad_snapshot(tmp_path / "month_000", edit_cell("labels", 0, "churn_label", "1"))
    with pytest.raises(DataValidationError, match="column churn_label"):
        load.load_snapshot(bad, conn=pg_conn)
    assert all(v is None for v in dump(pg_conn).values())


def test_many_problems_are_reported_together(tmp_path):
    def mutate(rows, header):
        for i in range(N):
            edit_cell("users", i, "has_family", "maybe")(rows, header)
        edit_cell("labels", 0, "churn_label", "no")(rows, header)

    bad = write_bad_snapshot(tmp_path / "month_001", mutate)
    with pytest.raises(DataValidationError) as info:
        validate.check_snapshot(bad)
    message = str(info.value)
    assert message.startswith(f"{N + 1} problems in 2 files; the first 10:")
    assert message.count("column has_family") == 10
    assert "line 2, column has_family" in message and "line 11, column has_family" in message
    assert len(info.value.problems) == 10


# --- chunks: a big file is read and COPied a chunk at a time --------------------------------------

BIG = 300  # users of the "big" snapshots below: with CHUNK_BYTES of 256 each file is 19 to 80 chunks


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(validate, "CHUNK_BYTES", 256)


def test_load_in_small_chunks_writes_what_a_whole_file_load_writes(pg_conn, tmp_path, small_chunks):
    folder = write_snapshot(tmp_path / "month_000", n=BIG)
    checked = load.prepare_snapshot(folder)
    assert all(len(f.digests) >= 10 for f in checked.files.values())
    assert load.load_snapshot(folder, conn=pg_conn) == {t.name: BIG for t in schema.TABLES}
    chunked = dump(pg_conn)
    warehouse.drop_schema(pg_conn)
    validate.CHUNK_BYTES = 1 << 30
    load.load_snapshot(folder, conn=pg_conn)

    def strip(d):
        return {k: [r[:-1] if k.endswith("snapshots") else r for r in v] for k, v in d.items()}

    assert strip(dump(pg_conn)) == strip(chunked)  # the same rows (loaded_at aside)


def test_bad_row_in_the_last_chunk_of_the_last_file_loads_nothing(pg_conn, tmp_path, month_000, small_chunks):
    load.load_snapshot(month_000, conn=pg_conn)
    before = dump(pg_conn)
    bad = write_snapshot(tmp_path / "bad" / "month_001", month=1, n=BIG)
    labels = bad / "labels.csv"
    labels.write_bytes(labels.read_bytes().rstrip(b"\n").rsplit(b",", 1)[0] + b",maybe\n")  # the last row
    assert len([*validate._chunks(labels, validate.CHUNK_BYTES)]) >= 10
    with pytest.raises(DataValidationError) as info:
        load.load_snapshot(bad, conn=pg_conn)
    assert (
        str(info.value) == f"{bad / 'labels.csv'}, line {BIG + 1}, column churn_label: expected a boolean "
        "(JSON true or false, CSV True or False) (got 'maybe')"
    )
    assert dump(pg_conn) == before


def test_file_changed_after_validation_rolls_the_whole_load_back(pg_conn, tmp_path, month_000, small_chunks):
    """The COPY reads each file again; a chunk that is not the one validated (here: labels.csv's
    last, after five tables were written in the transaction) aborts it: nothing is written."""
    load.load_snapshot(month_000, conn=pg_conn)
    before = dump(pg_conn)
    folder = write_snapshot(tmp_path / "new" / "month_001", month=1, n=BIG)
    snap = load.prepare_snapshot(folder)
    labels = folder / "labels.csv"
    data = labels.read_bytes()
    last_value = data.rstrip(b"\n").rsplit(b",", 1)[1]
    labels.write_bytes(
        data.rstrip(b"\n").rsplit(b",", 1)[0]
        + b","
        + {b"True": b"False", b"False": b"True"}[last_value]
        + b"\n"
    )  # still valid
    with pytest.raises(DataValidationError) as info:
        load.write_snapshots(pg_conn, [snap])
    message = str(info.value)
    last_chunk = [p.first_line for p in validate._chunks(labels, validate.CHUNK_BYTES)][-1]
    assert f"{labels}, line {last_chunk}: the file changed after it was validated" in message
    assert "the load was rolled back: nothing was written" in message
    assert dump(pg_conn) == before


# --- the merge helpers the consumer reuses --------------------------------------------------------


def test_merge_helpers_dedupe_and_keep_newest(pg_conn):
    table = schema.table("payments_agg_90d")
    warehouse.ensure_schema(pg_conn)
    cols = warehouse.staging_columns(table)
    assert cols == ["user_id", "as_of", "failed_payments_90d", "snapshot"]
    with pg_conn.transaction(), pg_conn.cursor() as cur:
        warehouse.create_staging_table(cur, table, "stage_test")
        warehouse.copy_rows(
            cur,
            "stage_test",
            cols,
            [
                ("1000-AAAAA", FEB, 1, "month_001"),
                ("1000-AAAAA", JAN, 5, "month_000"),
                ("1000-AAAAA", FEB, 2, "month_001"),  # same key again: the last one wins
            ],
        )
        counts = warehouse.upsert_snapshot_rows(cur, table, "stage_test")
    assert counts == warehouse.MergeCounts(snapshot=2, base=1)
    assert pg_conn.execute(
        "SELECT as_of, failed_payments_90d FROM payments_agg_90d_snapshots ORDER BY as_of"
    ).fetchall() == [(JAN, 5), (FEB, 2)]
    assert pg_conn.execute("SELECT as_of, failed_payments_90d FROM payments_agg_90d").fetchall() == [(FEB, 2)]

    with pg_conn.transaction(), pg_conn.cursor() as cur:  # an older event alone: base unchanged
        warehouse.create_staging_table(cur, table, "stage_test")
        warehouse.copy_rows(cur, "stage_test", cols, [("1000-AAAAA", JAN, 7, "month_000")])
        counts = warehouse.upsert_snapshot_rows(cur, table, "stage_test")
    assert counts == warehouse.MergeCounts(snapshot=1, base=0)
    assert pg_conn.execute("SELECT failed_payments_90d FROM payments_agg_90d").fetchall() == [(2,)]


def test_ensure_schema_rejects_a_table_that_does_not_match(pg_conn):
    pg_conn.execute("CREATE TABLE labels (user_id TEXT PRIMARY KEY, churn_label TEXT)")
    with pytest.raises(Exception, match=r"labels.churn_label is text, the registry says boolean"):
        warehouse.ensure_schema(pg_conn)


# --- CLI and connection errors --------------------------------------------------------------------


def test_cli_loads_folders(pg_conn, month_000, month_001, capsys):
    assert load.main([str(month_000), str(month_001)]) == 0
    assert pg_conn.execute("SELECT count(*) FROM labels_snapshots").fetchone()[0] == 2 * N


def test_cli_bad_file_prints_error_without_traceback(pg_conn, tmp_path, month_000, capsys):
    bad = write_bad_snapshot(tmp_path / "bad" / "month_001", edit_cell("users", 0, "user_is_senior", "yes"))
    assert load.main([str(month_000), str(bad)]) == DataValidationError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "\nerror: " in err
    assert "users.csv, line 2, column user_is_senior" in err
    assert "Traceback" not in err
    assert all(v is None for v in dump(pg_conn).values())  # the good folder was not loaded either


def test_python_dash_m_reports_bad_file(tmp_path):
    bad = write_bad_snapshot(tmp_path / "month_001", edit_cell("labels", 3, "churn_label", "yes"))
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.batch.load", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert proc.returncode == DataValidationError.exit_code
    assert "error: " in proc.stderr and "labels.csv, line 5, column churn_label" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_as_of_needs_one_folder(month_000, month_001, capsys):
    with pytest.raises(SystemExit) as info:
        load.main([str(month_000), str(month_001), "--as-of", "2024-01-31"])
    assert info.value.code == 2


def test_unknown_snapshot_name_needs_as_of(tmp_path, capsys):
    folder = write_snapshot(tmp_path / "export")
    assert load.main([str(folder)]) == 1
    assert "--as-of" in capsys.readouterr().err


def test_unreachable_database_is_service_unavailable(month_000, monkeypatch, capsys):
    monkeypatch.setenv("POSTGRES_PORT", "1")
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret-pw")
    with pytest.raises(ServiceUnavailable) as info:
        load.load_snapshot(month_000)
    message = str(info.value)
    assert config.postgres().describe() in message
    assert "s3cret-pw" not in message

    assert load.main([str(month_000)]) == ServiceUnavailable.exit_code
    err = capsys.readouterr().err
    assert "error: PostgreSQL is not reachable" in err and "s3cret-pw" not in err
