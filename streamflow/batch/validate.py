"""Read a snapshot CSV into a typed DataFrame, checked against the table registry.

Every check is vectorised (pyarrow compute / numpy), so a file of 1,000,000 rows takes
about a second. The CSV is read with every column as a string and empty strings kept
(never turned into NaN), then each column is checked and converted by its registry type:

- the file exists, is not empty, is UTF-8 (a UTF-8 BOM is skipped);
- the header is exactly ``table.header``; every row has that many fields;
- int: ``-?[0-9]+``; float: a decimal or exponent literal (no NaN, no inf); bool: ``True`` or
  ``False``; date: a real ``YYYY-MM-DD`` day; str: one of ``column.choices`` when set;
- empty only where ``column.nullable`` (empty = NULL); numbers within ``column.min``/``max``;
- ``user_id`` matches ``schema.USER_ID_PATTERN`` and is unique in the file;
- across the files of one snapshot: every file has exactly the users of users.csv.

A problem reads ``<path>, line <N>, column <name>: <what is wrong> (got '<value>')`` with N the
1-based line of the file (the header is line 1). One ``DataValidationError`` reports the first
``MAX_PROBLEMS`` problems (by file, then line) and how many there are in all.

Reading goes through ``pyarrow.csv`` with all columns typed as strings and
``strings_can_be_null=False`` (the equivalent of ``pandas.read_csv(dtype=str,
keep_default_na=False)``): 0.5 s instead of 3 s for a 1,000,000-row subscriptions.csv.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streamflow import schema
from streamflow.errors import DataValidationError

MAX_PROBLEMS = 10
"""How many problems one error message lists."""

USERS_TABLE = "users"
"""The table whose user_ids every other file of a snapshot must have."""

_BOM = b"\xef\xbb\xbf"
_INT = r"^-?[0-9]+$"
_INT_64 = r"^-?[0-9]{1,18}$"
_FLOAT = r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_ZERO = r"^-?0*\.?0*(?:[eE][+-]?[0-9]+)?$"
_NOT_FINITE = r"(?i)^[+-]?(?:nan|inf|infinity)$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATE_RANGE = (date(1678, 1, 1), date(2261, 12, 31))  # what datetime64[ns] can hold
_VALUE_SHOWN = 160  # long enough for a whole header line
_NAME_SHOWN = 64


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, where it is and the offending value."""

    path: Path
    line: int | None
    column: str | None
    what: str
    value: str | None = None

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f", line {self.line}"
        if self.column is not None:
            where += f", column {_show_name(self.column)}"
        text = f"{where}: {self.what}"
        if self.value is not None:
            text += f" (got {_show(self.value)})"
        return text


def _show_name(name: str) -> str:
    """A column name as found in a file: control characters escaped, cut when very long."""
    if len(name) > _NAME_SHOWN:
        name = name[:_NAME_SHOWN] + "..."
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)


def _show(value: str) -> str:
    if len(value) > _VALUE_SHOWN:
        value = value[:_VALUE_SHOWN] + "..."
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
    return "'" + shown.replace("'", "\\'") + "'"


class _Problems:
    """Collects the first problems of each check and counts them all."""

    def __init__(self, path: Path, limit: int):
        self.path = path
        self.limit = limit
        self.items: list[Problem] = []
        self.count = 0

    def add(self, line: int | None, column: str | None, what: str, value: str | None = None):
        self.count += 1
        self.items.append(Problem(self.path, line, column, what, value))

    def add_mask(
        self, mask: np.ndarray, column: str, what: str, values: pa.Array, lines: np.ndarray
    ) -> None:
        """One problem per True in mask (row i is on file line lines[i])."""
        bad = np.flatnonzero(mask)
        if not len(bad):
            return
        self.count += len(bad)
        for i in bad[: self.limit]:
            self.items.append(Problem(self.path, int(lines[i]), column, what, values[int(i)].as_py()))

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class CheckedFile:
    """One file after validation: its problems, or its rows (typed, and as the checked bytes)."""

    table: schema.Table
    path: Path
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    rows: int = 0
    data: bytes = b""
    """The file's bytes without a BOM: exactly what was validated (the loader COPYs these)."""
    user_ids: pa.Array | None = None
    lines: np.ndarray | None = None
    """1-based file line of each row."""
    frame: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


# --- reading -------------------------------------------------------------------------------------


def _check_utf8(data: bytes, header: Sequence[str], problems: _Problems) -> None:
    """Report each invalid UTF-8 sequence (first few) with its line and column."""
    pos = 0
    while len(problems.items) < problems.limit:
        try:
            data[pos:].decode("utf-8")
            return
        except UnicodeDecodeError as exc:
            start, end = pos + exc.start, pos + exc.end
        line_start = data.rfind(b"\n", 0, start) + 1
        line = data.count(b"\n", 0, start) + 1
        field_no = data.count(b",", line_start, start)
        column = header[field_no] if field_no < len(header) else f"#{field_no + 1}"
        field_start = max(line_start, data.rfind(b",", line_start, start) + 1)
        field_end = min(
            (i for i in (data.find(b",", start), data.find(b"\n", start)) if i >= 0),
            default=len(data),
        )
        raw = data[field_start:field_end].rstrip(b"\r")
        problems.add(
            line,
            column,
            "not valid UTF-8: the file must be UTF-8 encoded",
            raw.decode("utf-8", "backslashreplace"),
        )
        pos = end


def _check_header(found: list[str], table: schema.Table, problems: _Problems) -> None:
    expected = table.header
    if found == expected:
        return
    header_text = ",".join(found)
    wanted = ",".join(expected)
    for name in expected:
        if name not in found:
            problems.add(1, name, f"missing from the header (expected '{wanted}')", header_text)
    seen: set[str] = set()
    for name in found:
        if name not in expected:
            problems.add(1, name or "''", f"unexpected column in the header (expected '{wanted}')", header_text)
        elif name in seen:
            problems.add(1, name, "appears twice in the header", header_text)
        seen.add(name)
    if not problems:
        for pos, (have, want) in enumerate(zip(found, expected), start=1):
            if have != want:
                problems.add(
                    1,
                    have,
                    f"in position {pos} of the header, where '{want}' belongs: columns out of "
                    f"order (expected '{wanted}')",
                    header_text,
                )
                break


def _count_fields(data: bytes, width: int, header: Sequence[str], problems: _Problems) -> None:
    """Report rows (unquoted CSV) whose field count is not the header's."""
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    commas = np.flatnonzero(buf == ord(","))
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    bad = np.flatnonzero(fields != width)
    bad = bad[bad > 0]  # line 1 is the header, checked already
    problems.count += len(bad)
    for i in bad[: problems.limit]:
        text = data[starts[i] : ends[i]].rstrip(b"\r").decode("utf-8")
        _wrong_width(problems, int(i) + 1, int(fields[i]) if text else 0, width, header, text)


def _wrong_width(problems, line, got, width, header, text):
    if got == 0:
        what = f"empty line; expected {width} fields"
        column = header[0]
    elif got < width:
        what = f"missing: the row has only {got} of the {width} fields"
        column = header[got]
    else:
        what = f"extra fields after this last column: the row has {got} fields, not {width}"
        column = header[-1]
    problems.items.append(Problem(problems.path, line, column, what, text))


def _split_quoted(text: str, width: int, header: Sequence[str], problems: _Problems):
    """Parse CSV that uses quotes with the csv module (slow path): columns and row lines."""
    if csv.field_size_limit() < len(text):  # a very long value is reported as such, not as malformed CSV
        csv.field_size_limit(len(text))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: list[list[str]] = [[] for _ in range(width)]
    lines: list[int] = []
    line = 1
    try:
        next(reader)  # header
        line = reader.line_num + 1
        for row in reader:
            if len(row) != width:
                problems.count += 1
                if len(problems.items) < problems.limit:
                    _wrong_width(problems, line, len(row), width, header, ",".join(row))
            elif not problems:
                for col, value in zip(columns, row):
                    col.append(value)
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as exc:
        problems.add(line, None, f"malformed CSV: {exc}")
    if problems:
        return None, None
    strings = pa.table({name: pa.array(col, pa.string()) for name, col in zip(header, columns)})
    return strings, np.asarray(lines, dtype=np.int64)


def _read_arrow(data: bytes, header: Sequence[str], block_size: int | None = None) -> pa.Table:
    """Every cell of unquoted CSV bytes as a string (pyarrow; raises ArrowInvalid)."""
    read_options = pacsv.ReadOptions(column_names=header, skip_rows=1)
    if block_size is not None:
        read_options.block_size = block_size
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=read_options,
        parse_options=pacsv.ParseOptions(
            quote_char=False, newlines_in_values=False, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _read_strings(data: bytes, table: schema.Table, problems: _Problems):
    """All cells as strings (a pyarrow Table in header order) and the file line of each row."""
    header = table.header
    width = len(header)
    if b'"' in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return _split_quoted(data.decode("utf-8"), width, header, problems)
    try:
        strings = _read_arrow(data, header)
    except pa.ArrowInvalid as exc:
        strings = None
        if "straddl" in str(exc):
            # A line longer than pyarrow's block (a few MB): read again with one block for all.
            try:
                strings = _read_arrow(data, header, block_size=min(len(data) + 1, 2**31 - 1))
            except pa.ArrowInvalid:
                strings = None
    lines_in_file = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    # pyarrow reads a blank line as a row of empty strings: look for those ourselves.
    blank_line = b"\n\n" in data or b"\n\r\n" in data
    if strings is None or strings.num_rows != lines_in_file - 1 or blank_line:
        _count_fields(data, width, header, problems)
        if not problems:  # pyarrow failed for a reason the field count does not explain
            return _split_quoted(data.decode("utf-8"), width, header, problems)
        return None, None
    return strings, np.arange(2, strings.num_rows + 2, dtype=np.int64)


# --- cells ---------------------------------------------------------------------------------------


def _np(mask) -> np.ndarray:
    return mask.to_numpy(zero_copy_only=False)


def _match(values: pa.Array, pattern: str) -> np.ndarray:
    return _np(pc.match_substring_regex(values, pattern))


def _one_of(values: pa.Array, choices: Sequence[str]) -> np.ndarray:
    """values in choices (a few equality scans beat pc.is_in's hashing 10x on short lists)."""
    ok = np.zeros(len(values), dtype=bool)
    for choice in choices:
        ok |= _np(pc.equal(values, choice))
    return ok


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _check_range(column: schema.Column, numbers: np.ndarray, ok: np.ndarray, strings, lines, problems):
    """Report the well-formed numbers (ok) outside column.min..column.max."""
    if column.min is None and column.max is None:
        return
    lo = -math.inf if column.min is None else column.min
    hi = math.inf if column.max is None else column.max
    out = ok & ((numbers < lo) | (numbers > hi))
    if column.min is not None and column.max is not None:
        what = f"out of range: must be between {_fmt(lo)} and {_fmt(hi)}"
    elif column.min is not None:
        what = f"out of range: must be at least {_fmt(lo)}"
    else:
        what = f"out of range: must be at most {_fmt(hi)}"
    problems.add_mask(out, column.name, what, strings, lines)


def _underflows(strings: pa.Array, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Literals like 1e-400 that parse to 0 without being zero (PostgreSQL's float8 rejects them)."""
    tiny = np.zeros(len(values), dtype=bool)
    zeros = np.flatnonzero(ok & (values == 0))
    if len(zeros):
        literal_zero = _match(strings.take(pa.array(zeros)), _ZERO)
        tiny[zeros[~literal_zero]] = True
    return tiny


def _to_dates(strings: pa.Array, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970 of the well-formed strings, and which of them are real days."""
    safe = pc.if_else(pa.array(ok), strings, "1970-01-01")
    real = ok.copy()
    epoch = date(1970, 1, 1).toordinal()
    try:
        days = _np(pc.cast(safe, pa.date32()).cast(pa.int32())).astype(np.int64)
    except pa.ArrowInvalid:  # some impossible day (2023-02-30): find them one by one
        days = np.zeros(len(strings), dtype=np.int64)
        for i in np.flatnonzero(ok):
            try:
                days[i] = date.fromisoformat(strings[int(i)].as_py()).toordinal() - epoch
            except ValueError:
                real[i] = False
    lo, hi = (d.toordinal() - epoch for d in _DATE_RANGE)
    real &= (days >= lo) & (days <= hi)
    return days, real


def _check_column(column: schema.Column, strings: pa.Array, lines: np.ndarray, problems: _Problems):
    """Check one column; return (numpy values or None, null mask) for the typed frame."""
    name = column.name
    empty = _np(pc.equal(strings, ""))
    present = ~empty
    if not column.nullable:
        problems.add_mask(empty, name, "empty, but the column is not nullable", strings, lines)
    kind = column.kind
    values = None
    if kind == "str":
        if column.choices:
            ok = _one_of(strings, column.choices)
            allowed = ", ".join(f"'{c}'" for c in column.choices)
            problems.add_mask(present & ~ok, name, f"not one of {allowed}", strings, lines)
        if name == schema.KEY:
            ok = _match(strings, schema.USER_ID_PATTERN.pattern)
            problems.add_mask(
                present & ~ok,
                name,
                f"not a user id like '7590-VHVEG' ({schema.USER_ID_PATTERN.pattern})",
                strings,
                lines,
            )
    elif kind == "bool":
        is_true = _np(pc.equal(strings, "True"))
        ok = is_true | _np(pc.equal(strings, "False"))
        problems.add_mask(present & ~ok, name, "not a boolean: must be True or False", strings, lines)
        values = is_true
    elif kind == "int":
        ok = _match(strings, _INT_64)
        bad = present & ~ok
        if bad.any():
            digits = _match(strings, _INT)
            problems.add_mask(bad & ~digits, name, "not an integer", strings, lines)
            problems.add_mask(bad & digits, name, "out of range for a 64-bit integer", strings, lines)
        values = _np(pc.cast(pc.if_else(pa.array(ok), strings, "0"), pa.int64()))
        _check_range(column, values, ok, strings, lines, problems)
    elif kind == "float":
        ok = _match(strings, _FLOAT)
        bad = present & ~ok
        if bad.any():
            not_finite = _match(strings, _NOT_FINITE)
            problems.add_mask(bad & not_finite, name, "not a finite number", strings, lines)
            problems.add_mask(bad & ~not_finite, name, "not a number", strings, lines)
        values = _np(pc.cast(pc.if_else(pa.array(ok), strings, "0"), pa.float64()))
        huge = ok & ~np.isfinite(values)
        problems.add_mask(huge, name, "not a finite number (too large for a float)", strings, lines)
        tiny = _underflows(strings, values, ok)
        problems.add_mask(tiny, name, "too close to zero for a float (PostgreSQL rejects it)", strings, lines)
        _check_range(column, values, ok & ~huge & ~tiny, strings, lines, problems)
    elif kind == "date":
        ok = _match(strings, _DATE)
        values, real = _to_dates(strings, ok)
        lo, hi = _DATE_RANGE
        problems.add_mask(
            present & ~real,
            name,
            f"not a date YYYY-MM-DD between {lo} and {hi}",
            strings,
            lines,
        )
    else:  # pragma: no cover - the registry only has the kinds above
        raise ValueError(f"column {name} has unknown kind {kind!r}")
    return values, empty


def _typed(column: schema.Column, strings: pa.Array, values, null: np.ndarray):
    """pandas array of the column's registry dtype (column.pandas_dtype)."""
    kind = column.kind
    if kind == "str":
        arr = pd.array(strings.to_numpy(zero_copy_only=False), dtype=column.pandas_dtype)
        if column.nullable and null.any():
            arr[null] = pd.NA
        return arr
    if kind == "int":
        return pd.arrays.IntegerArray(values, null.copy())
    if kind == "float":
        return pd.arrays.FloatingArray(values, null.copy())
    if kind == "bool":
        return pd.arrays.BooleanArray(values, null.copy())
    if kind == "date":
        stamps = (values.astype("datetime64[D]")).astype("datetime64[ns]")
        stamps[null] = np.datetime64("NaT")
        return pd.DatetimeIndex(stamps).tz_localize("UTC").array
    raise ValueError(kind)  # pragma: no cover


# --- files and snapshots -------------------------------------------------------------------------


def check_file(
    path: Path | str, table: schema.Table | str, *, frame: bool = True, limit: int = MAX_PROBLEMS
) -> CheckedFile:
    """Validate one CSV file; never raises for bad data (see ``.problems``).

    With ``frame`` the typed DataFrame (registry dtypes, user_id first) is built when the
    file is valid; the loader skips it (it COPYs ``.data``).
    """
    path = Path(path)
    table = schema.table(table) if isinstance(table, str) else table
    result = CheckedFile(table=table, path=path)
    problems = _Problems(path, limit)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(None, None, f"no such file (expected the {table.name} table here)")
    except OSError as exc:
        problems.add(None, None, f"cannot read the file: {exc.strerror or exc}")
    else:
        result = _check_data(result, data, problems, frame)
    result.problems = sorted(problems.items, key=lambda p: _order(table, p))[:limit]
    result.problem_count = problems.count
    return result


def _order(table: schema.Table, p: Problem):
    col = table.header.index(p.column) if p.column in table.header else -1
    return (p.line if p.line is not None else math.inf, col)


def _check_data(result: CheckedFile, data: bytes, problems: _Problems, frame: bool) -> CheckedFile:
    table = result.table
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    wanted = ",".join(table.header)
    if not data or data.isspace():
        problems.add(1, schema.KEY, f"the file is empty; expected the header '{wanted}'", "")
        return result
    end = data.find(b"\n")
    # The header ends at the first line break, \n, \r\n or a lone \r (old Mac line endings).
    first_line = data[: end if end >= 0 else len(data)].rstrip(b"\r").split(b"\r", 1)[0]
    first_line = first_line.decode("utf-8", "replace")
    try:
        found = next(csv.reader([first_line]), [])
    except csv.Error:  # e.g. a stray quote in a binary file: the header check reports it
        found = first_line.split(",")
    _check_utf8(data, found or table.header, problems)
    if problems:
        return result
    _check_header(found, table, problems)
    if problems:
        return result
    strings, lines = _read_strings(data, table, problems)
    if problems:
        return result
    if strings.num_rows == 0:
        problems.add(2, schema.KEY, "no rows after the header", "")
        return result

    columns = {name: strings.column(name).combine_chunks() for name in table.header}
    key_column = schema.Column(schema.KEY, "str")
    checked = {
        c.name: _check_column(c, columns[c.name], lines, problems)
        for c in (key_column, *table.columns)
    }
    user_ids = columns[schema.KEY]
    if len(pc.unique(user_ids)) != len(user_ids):
        _check_duplicates(user_ids, lines, problems)
    if problems:
        return result

    result.rows = strings.num_rows
    result.data = data
    result.user_ids = user_ids
    result.lines = lines
    if frame:
        result.frame = pd.DataFrame(
            {
                c.name: _typed(c, columns[c.name], *checked[c.name])
                for c in (key_column, *table.columns)
            }
        )
    return result


def _check_duplicates(user_ids: pa.Array, lines: np.ndarray, problems: _Problems) -> None:
    keys = pd.Series(user_ids.to_numpy(zero_copy_only=False))
    repeated = np.flatnonzero(keys.duplicated(keep="first").to_numpy())
    problems.count += len(repeated)
    first_line = {}
    for i in np.flatnonzero(keys.duplicated(keep=False).to_numpy()):
        first_line.setdefault(keys.iat[i], int(lines[i]))
    for i in repeated[: problems.limit]:
        key = keys.iat[i]
        problems.items.append(
            Problem(
                problems.path,
                int(lines[i]),
                schema.KEY,
                f"duplicate key: user_id also on line {first_line[key]}",
                key,
            )
        )


def check_user_sets(
    files: dict[str, CheckedFile], limit: int = MAX_PROBLEMS
) -> tuple[list[Problem], int]:
    """Where a file's user_ids differ from users.csv's (files that passed only).

    Returns the first problems of each file and how many there are in all.
    """
    users = files.get(USERS_TABLE)
    if users is None or not users.ok:
        return [], 0
    ref = users.user_ids
    found: list[Problem] = []
    count = 0
    for name, f in files.items():
        if name == USERS_TABLE or not f.ok:
            continue
        if len(f.user_ids) == len(ref) and pc.all(pc.equal(f.user_ids, ref)).as_py():
            continue  # same users in the same order: the usual case
        extra = np.flatnonzero(~_np(pc.is_in(f.user_ids, value_set=ref)))
        missing = np.flatnonzero(~_np(pc.is_in(ref, value_set=f.user_ids)))
        count += len(extra) + len(missing)
        for i in extra[:limit]:
            found.append(
                Problem(
                    f.path,
                    int(f.lines[i]),
                    schema.KEY,
                    f"user is not in {users.path.name}",
                    f.user_ids[int(i)].as_py(),
                )
            )
        for i in missing[:limit]:
            found.append(
                Problem(
                    f.path,
                    None,
                    schema.KEY,
                    f"no row for user '{ref[int(i)].as_py()}' of {users.path.name} "
                    f"(line {int(users.lines[i])} there)",
                )
            )
    return found, count


def raise_problems(problems: Sequence[Problem], total: int | None = None) -> None:
    """Raise one DataValidationError listing the first MAX_PROBLEMS problems (if any)."""
    if not problems:
        return
    total = len(problems) if total is None else max(total, len(problems))
    shown = list(problems[:MAX_PROBLEMS])
    if total == 1:
        message = str(shown[0])
    else:
        files = len({p.path for p in problems})
        where = f" in {files} files" if files > 1 else ""
        first = f"; the first {len(shown)}" if total > len(shown) else ""
        message = f"{total} problems{where}{first}:\n" + "\n".join(
            f"  {p}" for p in shown
        )
    error = DataValidationError(message)
    error.problems = shown
    raise error


def check_snapshot(folder: Path | str, *, frame: bool = False) -> dict[str, CheckedFile]:
    """Validate the six files of a snapshot folder; raise one DataValidationError for all problems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: no such snapshot folder")
    files = {t.name: check_file(folder / t.file, t, frame=frame) for t in schema.TABLES}
    problems = [p for f in files.values() for p in f.problems]
    total = sum(f.problem_count for f in files.values())
    cross, cross_count = check_user_sets(files)
    raise_problems(problems + cross, total + cross_count)
    return files


def read_table(path: Path | str, table: schema.Table | str) -> pd.DataFrame:
    """One validated CSV as a DataFrame of the registry's dtypes (raises DataValidationError)."""
    checked = check_file(path, table, frame=True)
    raise_problems(checked.problems, checked.problem_count)
    return checked.frame


def read_snapshot(folder: Path | str) -> dict[str, pd.DataFrame]:
    """The six validated tables of a snapshot folder, by table name (raises DataValidationError)."""
    return {name: f.frame for name, f in check_snapshot(folder, frame=True).items()}


__all__ = [
    "MAX_PROBLEMS",
    "CheckedFile",
    "Problem",
    "check_file",
    "check_snapshot",
    "check_user_sets",
    "raise_problems",
    "read_snapshot",
    "read_table",
]
