"""Transient or permanent: the classification of failed writes (consumer.write_errors, no I/O)."""

from __future__ import annotations

import psycopg
import psycopg.errors
import psycopg_pool
import pyarrow as pa
import pytest
import sqlalchemy.exc

from consumer.write_errors import PERMANENT, TRANSIENT, chain, classify, describe, sqlstate
from streamflow.errors import DataValidationError, ServiceUnavailable
from streamflow.push_validation import PushValidationError


def pg(code: str, message: str = "boom") -> psycopg.Error:
    """A psycopg error of a SQLSTATE, as the driver raises it for the server's error."""
    return psycopg.errors.lookup(code)(message)


TRANSIENT_CODES = {
    "57P01": "admin shutdown (server shutting down)",
    "57P02": "crash shutdown",
    "57P03": "cannot connect now (starting up)",
    "08000": "connection exception",
    "08001": "cannot connect",
    "08006": "connection failure",
    "57014": "query canceled (statement_timeout)",
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available",
    "53300": "too many connections",
    "53100": "disk full",
    "53200": "out of memory",
    "58030": "I/O error",
    # statement-level: every row would fail alike (retried, never dead-lettered)
    "42601": "syntax error",
    "42P01": "undefined table",
    "42703": "undefined column",
    "42804": "datatype mismatch",
    "42501": "insufficient privilege",
}
PERMANENT_CODES = {
    "22003": "numeric value out of range",
    "22P02": "invalid text representation",
    "22001": "string too long",
    "22021": "character not in repertoire",
    "23514": "CHECK violation",
    "23502": "NOT NULL violation",
    "23503": "foreign key violation",
    "23505": "unique violation",
    "21000": "cardinality violation (ON CONFLICT affects a row twice)",
    "54000": "program limit exceeded (index row too big)",
    "40002": "deferred constraint violated at commit",
}


@pytest.mark.parametrize("code", TRANSIENT_CODES, ids=lambda c: f"{c} {TRANSIENT_CODES[c]}")
def test_outages_timeouts_and_conflicts_are_transient(code):
    exc = pg(code)
    assert exc.sqlstate == code
    assert classify(exc) == TRANSIENT


@pytest.mark.parametrize("code", PERMANENT_CODES, ids=lambda c: f"{c} {PERMANENT_CODES[c]}")
def test_data_and_constraint_errors_are_permanent(code):
    exc = pg(code)
    assert exc.sqlstate == code
    assert classify(exc) == PERMANENT


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg.InterfaceError("the connection is closed"),
        psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError("network is unreachable"),
        MemoryError(),
        ServiceUnavailable("PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_errors_without_sqlstate_are_transient(exc):
    assert classify(exc) == TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("push to usage_agg_30d_fv: user_id is missing in some rows"),
        TypeError("unsupported operand"),
        KeyError("watch_hours_30d"),
        IndexError("list index out of range"),
        AttributeError("'NoneType' object has no attribute 'encode'"),
        ZeroDivisionError("division by zero"),
        OverflowError("int too big to convert"),
        AssertionError(),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        pa.ArrowInvalid("Could not convert 'x' with type str"),
        pa.ArrowTypeError("Expected bytes, got a 'int' object"),
        PushValidationError(
            "batch of t.usage_agg_30d: row 3 (user 0001-ABCDE), "
            "field skips_7d: expected an integer from 0 to 1000000"
        ),
        psycopg.DataError(
            "PostgreSQL text fields cannot contain NUL (0x00) bytes"
        ),  # refused by psycopg itself
        psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters were passed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_in_our_encoding_path_are_permanent(exc):
    assert classify(exc) == PERMANENT


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("something odd"),
        Exception("no idea"),
        NotImplementedError(
            "offline_write_batch"
        ),  # a stock store that cannot write: configuration, not data
        DataValidationError("a snapshot file"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unknown_errors_are_transient(exc):
    """Never dead-letter good data because of something we do not understand: retry it."""
    assert classify(exc) == TRANSIENT


def raised(outer: type[Exception], message: str, inner: Exception, *, explicit: bool) -> Exception:
    """``outer`` raised while handling ``inner``: ``raise ... from inner`` or implicitly chained."""
    try:
        try:
            raise inner
        except Exception:  # noqa: BLE001 - any inner exception
            if explicit:
                raise outer(message) from inner
            raise outer(message)  # noqa: B904 - the implicit __context__ is what is tested
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize("explicit", [True, False], ids=["cause", "context"])
def test_a_wrapped_database_error_is_classified_by_its_sqlstate(explicit):
    check = pg(
        "23514", 'new row for relation "t" violates check constraint "c"\nDETAIL:  Failing row contains (1).'
    )
    wrapped = raised(RuntimeError, "Feast push failed", check, explicit=explicit)
    assert sqlstate(wrapped) == "23514"
    assert classify(wrapped) == PERMANENT
    outage = raised(
        RuntimeError, "Feast push failed", pg("57P01", "terminating connection"), explicit=explicit
    )
    assert classify(outage) == TRANSIENT


def test_sqlalchemy_wraps_the_driver_error_in_orig():
    exc = sqlalchemy.exc.IntegrityError("INSERT ...", {}, pg("23505", "duplicate key value"))
    assert sqlstate(exc) == "23505" and classify(exc) == PERMANENT
    exc = sqlalchemy.exc.DBAPIError("INSERT ...", {}, pg("40P01", "deadlock detected"))
    assert classify(exc) == TRANSIENT


def test_an_outage_anywhere_in_the_chain_makes_it_transient():
    # a ValueError (a bug, by itself) raised because the connection broke: the outage decides
    assert (
        classify(raised(ValueError, "bad state", psycopg.OperationalError("server closed"), explicit=True))
        == TRANSIENT
    )
    # a CHECK violation, then the connection died during the rollback
    assert (
        classify(raised(psycopg.OperationalError, "server closed", pg("23514"), explicit=False)) == TRANSIENT
    )
    assert (
        classify(
            raised(
                pg("57014").__class__,
                "canceling statement due to statement timeout",
                pg("22003"),
                explicit=False,
            )
        )
        == TRANSIENT
    )


def test_a_cycle_in_the_chain_ends():
    a, b = ValueError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert [str(e) for e in chain(a)] == ["a", "b"]
    assert classify(a) == PERMANENT


def test_describe_gives_the_databases_error_first_line_with_its_sqlstate():
    check = pg(
        "23514",
        'new row for relation "usage_agg_30d_snapshots" violates check constraint "c"\n'
        "DETAIL:  Failing row contains (0001-ABCDE, 2024-01-31 00:00:00+00, 720).",
    )
    assert describe(check) == (
        'CheckViolation: new row for relation "usage_agg_30d_snapshots" violates '
        'check constraint "c" (SQLSTATE 23514)'
    )
    assert describe(raised(RuntimeError, "Feast push failed", check, explicit=True)) == describe(check)
    assert describe(KeyError("watch_hours_30d")) == "KeyError: 'watch_hours_30d'"
    assert describe(AssertionError()) == "AssertionError"
    long = describe(ValueError("x" * 2000), limit=100)
    assert long == "ValueError: " + "x" * 100 + "..."
