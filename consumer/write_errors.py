"""What a failed write means, and how a batch holding poison events is written anyway (no I/O).

A write fails either for a *transient* reason (PostgreSQL away, restarting or overloaded, a
timeout, a serialization failure or a deadlock): the same write succeeds later, so the consumer
retries it with backoff and never commits past it. Or it fails for a *permanent* reason that lies
in what is written (a data exception, a constraint the row violates, a bug in our encoding of
it): retrying the same rows fails forever, and one such event would stall its partitions.

:func:`classify` tells them apart by SQLSTATE (``psycopg.Error.sqlstate``) and by exception type,
looking through ``__cause__`` / ``__context__`` (and SQLAlchemy's ``.orig``): Feast or our stores
may wrap the database's error. Anything it does not recognise is transient, and so is a chain
that holds any transient error: good data is never dead-lettered because of an outage.

:func:`isolate` writes rows through a caller's ``write(start, stop)`` and, when a range fails
permanently, bisects it until the failing rows stand alone; a transient error anywhere stops it
(the caller retries the whole batch, nothing is dead-lettered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from streamflow.errors import ServiceUnavailable

TRANSIENT = "transient"
PERMANENT = "permanent"

_TRANSIENT_CLASSES = frozenset(
    {
        "08",  # connection exception (cannot connect, connection failure)
        "42",  # syntax error or access rule violation: a dropped table or column, a revoked grant, a
        #        statement our code got wrong. It is about the statement, not a row: every row would
        #        fail alike, so nothing is dead-lettered; it is retried (and the outage budget,
        #        --max-outage, stops a consumer that keeps failing) until an operator fixes it.
        "40",  # transaction rollback: serialization failure 40001, deadlock 40P01 (but see 40002)
        "53",  # insufficient resources: disk full, out of memory, too many connections 53300
        "57",  # operator intervention: query canceled 57014 (timeouts), admin shutdown 57P01, ...
        "58",  # system error (I/O error on the server)
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "55P03",  # lock not available (lock_timeout)
        "55006",  # object in use (a concurrent DDL)
    }
)
_PERMANENT_CLASSES = frozenset(
    {
        "21",  # cardinality violation (a batch that affects one row twice)
        "22",  # data exception: a value the column cannot hold
        "23",  # integrity constraint violation: CHECK 23514, NOT NULL 23502, FK 23503, unique 23505
        "44",  # WITH CHECK OPTION violation
        "54",  # program limit exceeded: a row too big for an index, a statement too complex
    }
)
_PERMANENT_CODES = frozenset(
    {
        "40002",  # transaction integrity constraint violation: a deferred constraint, at commit
    }
)

_BUGS = (ValueError, TypeError, LookupError, AttributeError, AssertionError, ArithmeticError)
"""Plain Python errors of our encoding path (KeyError and IndexError are LookupErrors; Arrow's
ArrowInvalid is a ValueError). A wrapped outage is still transient: see :func:`classify`."""

_OUTAGES = (OSError, TimeoutError, MemoryError)
"""Socket, connection and timeout errors, and memory pressure: the same write succeeds later."""


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps (``__cause__``, ``__context__``, SQLAlchemy's ``.orig``),
    each once, outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo.extend(e for e in (current.__cause__, current.__context__, orig) if isinstance(e, BaseException))


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg 3's ``sqlstate``, psycopg2's ``pgcode``), if any."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def sqlstate(exc: BaseException) -> str | None:
    """The first SQLSTATE in the exception's chain."""
    for e in chain(exc):
        code = sqlstate_of(e)
        if code:
            return code
    return None


def classify_sqlstate(code: str) -> str | None:
    """TRANSIENT or PERMANENT for a SQLSTATE, None when it says neither."""
    if code in _PERMANENT_CODES:
        return PERMANENT
    if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
        return TRANSIENT
    if code[:2] in _PERMANENT_CLASSES:
        return PERMANENT
    return None


def _verdict(exc: BaseException) -> str | None:
    """What one exception of a chain says by itself (None: nothing)."""
    verdict = getattr(exc, "verdict", None)  # classified where it was raised (consumer.push_workers)
    if verdict in (TRANSIENT, PERMANENT):
        return verdict
    code = sqlstate_of(exc)
    if code:
        return classify_sqlstate(code)
    for module, transient, permanent in _driver_errors():
        if isinstance(exc, module):
            if isinstance(exc, transient):
                return TRANSIENT
            if isinstance(exc, permanent):
                return PERMANENT
            return None
    if isinstance(exc, (*_OUTAGES, ServiceUnavailable, SystemicWriteError)):
        return TRANSIENT
    if isinstance(exc, _BUGS):
        return PERMANENT
    return None


_DRIVER_ERRORS: list | None = None


def _driver_errors() -> list:
    """(base class, transient classes, permanent classes) of the database libraries, for their
    errors that carry no SQLSTATE (a connection lost, a value psycopg itself refused)."""
    global _DRIVER_ERRORS
    if _DRIVER_ERRORS is None:
        found: list[tuple[type[Exception], tuple[type[Exception], ...], tuple[type[Exception], ...]]] = []
        try:
            import psycopg

            found.append(
                (
                    psycopg.Error,
                    (psycopg.OperationalError, psycopg.InterfaceError),
                    (
                        psycopg.DataError,
                        psycopg.IntegrityError,
                        psycopg.ProgrammingError,
                        psycopg.NotSupportedError,
                    ),
                )
            )
        except ImportError:  # pragma: no cover - psycopg is a dependency
            pass
        try:
            import sqlalchemy.exc as sa

            found.append(
                (
                    sa.SQLAlchemyError,
                    (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError),
                    (sa.DataError, sa.IntegrityError, sa.ProgrammingError),
                )
            )
        except ImportError:  # pragma: no cover
            pass
        _DRIVER_ERRORS = found
    return _DRIVER_ERRORS


def classify(exc: BaseException) -> str:
    """TRANSIENT or PERMANENT: a transient error anywhere in the chain makes it transient; else a
    permanent one makes it permanent; else (unknown) transient."""
    permanent = False
    for e in chain(exc):
        verdict = _verdict(e)
        if verdict == TRANSIENT:
            return TRANSIENT
        permanent = permanent or verdict == PERMANENT
    return PERMANENT if permanent else TRANSIENT


def describe(exc: BaseException, limit: int = 500) -> str:
    """The database's error when the chain holds one, else the exception itself: its type and
    the first line of its message, with the SQLSTATE (``CheckViolation: new row for relation
    "t" violates check constraint "c" (SQLSTATE 23514)``)."""
    shown = next((e for e in chain(exc) if sqlstate_of(e)), exc)
    lines = str(shown).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > limit:
        first = first[:limit] + "..."
    name = getattr(shown, "type_name", None) or type(shown).__name__  # a worker's error keeps its name
    text = f"{name}: {first}" if first else name
    code = sqlstate_of(shown)
    return f"{text} (SQLSTATE {code})" if code else text


class SystemicWriteError(Exception):
    """Every row of a batch failed on its own with the same error: the cause is the write, not the
    rows (a schema change, a bug). Transient for :func:`classify`: the batch is retried, never
    dead-lettered whole."""


@dataclass(frozen=True)
class Refused:
    """A row that failed permanently on its own, and the error."""

    row: int
    error: BaseException


def isolate(
    write: Callable[[int, int], object],
    count: int,
    *,
    classify: Callable[[BaseException], str] = classify,
    on_permanent: Callable[[int, int, BaseException], None] | None = None,
) -> list[Refused]:
    """Write rows ``[0, count)`` through ``write(start, stop)``; the rows that fail permanently on
    their own, in order.

    A range that fails permanently is split in two halves, each written on its own (left first),
    until every range has been written or is one row that still fails (refused). Each row ends up
    in exactly one written range or refused. A transient error raised by any write is raised
    again at once: the caller retries the whole batch (the ranges written meanwhile are written
    again, which idempotent writes allow) and nothing is refused. ``on_permanent(start, stop,
    error)`` is told of every permanent failure of a range.
    """
    refused: list[Refused] = []
    todo = [(0, count)] if count > 0 else []
    while todo:
        start, stop = todo.pop()
        try:
            write(start, stop)
            continue
        except Exception as exc:  # sorted below: transient ones go up
            if classify(exc) != PERMANENT:
                raise
            if on_permanent is not None:
                on_permanent(start, stop, exc)
            if stop - start == 1:
                refused.append(Refused(start, exc))
                continue
        middle = (start + stop) // 2
        todo += [(middle, stop), (start, middle)]  # a stack: the left half first
    if count > 1 and len(refused) == count and len({describe(r.error) for r in refused}) == 1:
        raise SystemicWriteError(f"all {count} rows failed alike: {describe(refused[0].error)}") from refused[
            0
        ].error
    return refused
