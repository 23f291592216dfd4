"""Read a snapshot CSV into a typed DataFrame, checked against the table registry.

Every check is vectorised (pyarrow compute / numpy), so a file of 1,000,000 rows takes
about a second. The CSV is read with every column as a string and empty strings kept
(never turned into NaN), then each column is checked and converted by its registry type:

- the file exists, is not empty, is UTF-8 (a UTF-8 BOM is skipped);
- the header is exactly ``table.header``; every row has that many fields;
- every field keeps its column's contract (:func:`streamflow.contract.check_texts`, the rules
  every door uses); empty only where ``column.nullable`` (empty = NULL);
- ``user_id`` is unique in the file;
- across the files of one snapshot: every file has exactly the users of users.csv.

A problem reads ``<path>, line <N>, column <name>: <the contract's reason> (got '<value>')`` with N the
1-based line of the file (the header is line 1). One ``DataValidationError`` reports the first
``MAX_PROBLEMS`` problems (by file, then line) and how many there are in all.

Reading goes through ``pyarrow.csv`` with all columns typed as strings and
``strings_can_be_null=False`` (the equivalent of ``pandas.read_csv(dtype=str,
keep_default_na=False)``, and faster).

A file is read in chunks of whole lines (``CHUNK_BYTES``), each checked as a file of its own
would be, lines counted on across them, so memory hardly grows with the file: what is kept of
it is a digest of each chunk and its user ids, one int64 each (exact, 8 bytes instead of a
60-byte str), for the duplicates and the user sets. ``check_snapshot`` is the validating pass; then
``read_chunks`` reads a valid file again, chunk by chunk, checking every chunk again and that it
is the one validated: the producer encodes and sends those, the loader COPYs them.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import itertools
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streamflow import contract, schema
from streamflow.errors import DataValidationError

MAX_PROBLEMS = 10
"""How many problems one error message lists."""

CHUNK_BYTES = 4 << 20
"""Bytes of a file read and checked at once (whole lines; a longer line is read whole)."""

USERS_TABLE = "users"
"""The table whose user_ids every other file of a snapshot must have."""

_BOM = b"\xef\xbb\xbf"
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
    """Collects the first problems of each check and counts them all.

    The checks see one chunk of a file at a time, as if it were a file of its own (the header,
    line 1, then the chunk's lines from line 2 on); ``shift`` turns those lines into the file's.
    """

    def __init__(self, path: Path, limit: int, shift: int = 0):
        self.path = path
        self.limit = limit
        self.shift = shift
        self.items: list[Problem] = []
        self.count = 0

    def problem(self, line: int | None, column: str | None, what: str, value: str | None = None) -> Problem:
        """A problem on a line of the chunk (the header line stays line 1)."""
        if line is not None and line > 1:
            line += self.shift
        return Problem(self.path, line, column, what, value)

    def add(self, line: int | None, column: str | None, what: str, value: str | None = None):
        self.count += 1
        self.items.append(self.problem(line, column, what, value))

    def add_mask(self, mask: np.ndarray, column: str, what: str, values: pa.Array, lines: np.ndarray) -> None:
        """One problem per True in mask (row i is on chunk line lines[i])."""
        bad = np.flatnonzero(mask)
        if not len(bad):
            return
        self.count += len(bad)
        for i in bad[: self.limit]:
            self.items.append(self.problem(int(lines[i]), column, what, values[int(i)].as_py()))

    def merge(self, other: _Problems, order) -> None:
        """Add a chunk's problems; only the first ``limit`` (by ``order``) are kept, all are counted."""
        self.count += other.count
        self.items = sorted(self.items + other.items, key=order)[: self.limit]

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class CheckedFile:
    """One file after validation: its problems, or how to read its rows again (``read_chunks``).

    What is kept does not grow with the file but for ``ids`` (8 bytes a row, for the checks
    across the files of a snapshot; ``check_snapshot`` drops them when done) and ``frame``.
    """

    table: schema.Table
    path: Path
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    rows: int = 0
    chunk_bytes: int = 0
    """The size the file was read in: ``read_chunks`` reads the same chunks again."""
    digests: list[bytes] = field(default_factory=list)
    """A digest of each chunk that was checked: ``read_chunks`` gives only these same bytes."""
    ids: _Ids | None = None
    """The user ids of the rows, with their lines (files that passed)."""
    frame: pd.DataFrame | None = None
    """The typed rows (only with ``check_file(frame=True)``: they grow with the file)."""

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@dataclass
class Chunk:
    """Consecutive rows of a validated file, read again (``read_chunks``)."""

    data: memoryview
    """The rows' lines exactly as in the file (no header, no BOM): what the loader COPYs."""
    first_line: int
    """File line of the first row."""
    rows: int
    frame: pd.DataFrame | None = None
    """The rows typed by the registry (user_id first), with ``read_chunks(frame=True)``."""


# --- reading -------------------------------------------------------------------------------------


def _check_utf8(data: bytes, header: Sequence[str], problems: _Problems) -> None:
    """Report each invalid UTF-8 sequence (first few) with its line and column."""
    if data.isascii():  # the usual case, without decoding a copy of the whole chunk
        return
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
            problems.add(
                1, name or "''", f"unexpected column in the header (expected '{wanted}')", header_text
            )
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
    problems.items.append(problems.problem(line, column, what, text))


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


def _check_column(column: schema.Column, strings: pa.Array, lines: np.ndarray, problems: _Problems):
    """Check one column by the contract (an empty field is null); return (numpy values or None,
    null mask) for the typed frame."""
    name = column.name
    empty = _np(pc.equal(strings, ""))
    present = ~empty
    if not column.nullable:
        problems.add_mask(empty, name, contract.NULL, strings, lines)
    ok, values = contract.check_texts(column, strings)
    problems.add_mask(present & ~ok, name, contract.expectation(column), strings, lines)
    return values, empty


def _typed(column: schema.Column, strings: pa.Array, values, null: np.ndarray):
    """pandas array of the column's registry dtype (column.pandas_dtype)."""
    kind = column.kind
    if kind in ("id", "category"):
        arr = pd.array(strings.to_numpy(zero_copy_only=False), dtype=column.pandas_dtype)
        if column.nullable and null.any():
            arr[null] = pd.NA
        return arr
    if kind == "integer":
        return pd.arrays.IntegerArray(values, null.copy())
    if kind == "float":
        return pd.arrays.FloatingArray(values, null.copy())
    if kind == "boolean":
        return pd.arrays.BooleanArray(values, null.copy())
    if kind == "date":
        stamps = (values.astype("datetime64[D]")).astype("datetime64[ns]")
        stamps[null] = np.datetime64("NaT")
        return pd.DatetimeIndex(stamps).tz_localize("UTC").array
    raise ValueError(kind)  # pragma: no cover


# --- chunks --------------------------------------------------------------------------------------
#
# A file is read in pieces of whole CSV records of about CHUNK_BYTES: each piece is checked as if
# it were a file of its own (the header line, then its lines), and its lines are counted on from
# the pieces before. A record never straddles two pieces: a piece ends at a line break outside
# quotes. A line longer than the piece size makes a longer piece (it is checked whole, as before).


class _Piece(NamedTuple):
    data: bytes
    """The header line, then the piece's rows: checked as a file of its own."""
    header_end: int
    """Where the rows start in data."""
    first_line: int
    """File line of the piece's first row."""

    @property
    def rows(self) -> memoryview:
        return memoryview(self.data)[self.header_end :]


def _line_break(buf: bytearray, eof: bool) -> bytes | None:
    """The file's line break, from its first line: ``\\n`` (also for ``\\r\\n``) or a lone ``\\r``
    (old Mac files); None while the first line has not ended yet."""
    nl, cr = buf.find(b"\n"), buf.find(b"\r")
    if cr < 0 or 0 <= nl < cr:
        return b"\n" if nl >= 0 or eof else None
    if cr + 1 < len(buf):
        return b"\n" if buf[cr + 1] == ord("\n") else b"\r"
    return b"\r" if eof else None


def _record_end(buf: bytearray, sep: bytes) -> int:
    """Where the last whole record of buf ends: after its last line break outside quotes (an even
    number of quotes before it: a piece starts outside quotes); 0 when there is none."""
    end = buf.rfind(sep)
    if end < 0 or buf.find(b'"') < 0:
        return end + 1
    quotes = buf.count(b'"', 0, end)
    while end >= 0 and quotes % 2:
        before = buf.rfind(sep, 0, end)
        quotes -= buf.count(b'"', before + 1, end)
        end = before
    return end + 1


def _chunks(path: Path, size: int) -> Generator[_Piece, None, None]:
    """The file (a UTF-8 BOM skipped) in pieces of whole records of about ``size`` bytes, each but
    the first with the header line put in front. The rest of a file whose quotes do not pair is
    one piece (bad CSV anyway)."""
    with open(path, "rb") as f:
        buf = bytearray()
        sep = header = None
        line = 2
        block = f.read(size)
        if block.startswith(_BOM):
            block = block[len(_BOM) :] or f.read(size)
        while True:
            eof = not block
            buf += block
            known = sep is not None
            if sep is None:
                sep = _line_break(buf, eof)
            if eof:
                cut = len(buf)
            elif sep is None or (known and sep not in block):
                cut = 0  # a line break before this block is in quotes and stays so
            else:
                cut = _record_end(buf, sep)
            if cut:
                with memoryview(buf) as view:  # one copy of the bytes per piece
                    if header is None:
                        data = bytes(view[:cut])
                        header = data[: data.find(sep or b"\n") + 1 or len(data)]
                    else:
                        data = b"".join((header, view[:cut]))
                del buf[:cut]
                yield _Piece(data, len(header), line)
                line += data.count(sep or b"\n", len(header))
            if eof:
                return
            block = f.read(size)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _header_of(data: bytes) -> list[str]:
    """The column names of the first line (it ends at \\n, \\r\\n or a lone \\r)."""
    end = data.find(b"\n")
    raw = data[: end if end >= 0 else len(data)].rstrip(b"\r").split(b"\r", 1)[0]
    first_line = raw.decode("utf-8", "replace")
    try:
        return next(csv.reader([first_line]), [])
    except csv.Error:  # e.g. a stray quote in a binary file: the header check reports it
        return first_line.split(",")


def _check_rows(table: schema.Table, piece: _Piece, problems: _Problems, *, utf8_checked: bool = False):
    """Check the rows of one piece (its header line passed already).

    Returns (strings by column, chunk line of each row, checked columns) when the rows could be
    read, whatever their cells' problems; None when they could not, or there are none.
    """
    if piece.header_end == len(piece.data):
        return None
    data = piece.data
    if not utf8_checked:
        _check_utf8(data, table.header, problems)
        if problems:
            return None
    strings, lines = _read_strings(data, table, problems)
    if problems or strings.num_rows == 0:
        return None
    columns = {name: strings.column(name).combine_chunks() for name in table.header}
    checked = {
        c.name: _check_column(c, columns[c.name], lines, problems)
        for c in (schema.KEY_COLUMN, *table.columns)
    }
    return columns, lines, checked


def _frame(table: schema.Table, columns: dict[str, pa.Array], checked: dict) -> pd.DataFrame:
    return pd.DataFrame(
        {c.name: _typed(c, columns[c.name], *checked[c.name]) for c in (schema.KEY_COLUMN, *table.columns)}
    )


# --- user ids ------------------------------------------------------------------------------------
#
# Duplicates within a file and the user sets across files need every id of a file at once. An id
# that keeps the user id's contract (4 digits, '-', 5 capitals) is kept as one int64: exact (no hash,
# no collision), sorting as the text does, 8 bytes instead of a 60-byte str (1,000,000 ids: 8 MB,
# and 8 MB of lines). The other ids (bad files only) are kept as text.

_LETTERS = 26**5
_ID_ZERO = np.frombuffer(b"0000-AAAAA", dtype=np.uint8).astype(np.int64)
_ID_WEIGHTS = np.array(
    [1000 * _LETTERS, 100 * _LETTERS, 10 * _LETTERS, _LETTERS, 0, 26**4, 26**3, 26**2, 26, 1], dtype=np.int64
)


def _id_codes(ids: pa.Array) -> np.ndarray:
    """int64 codes of ids that all keep the user id's contract (10 ASCII characters each)."""
    if not len(ids):
        return np.empty(0, dtype=np.int64)
    ids = ids.cast(pa.string())
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset : ids.offset + len(ids)]
    chars = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[offsets[:, None] + np.arange(10)]
    return (chars.astype(np.int64) - _ID_ZERO) @ _ID_WEIGHTS


def _id_text(code) -> str:
    digits, rest = divmod(int(code), _LETTERS)
    letters = []
    for _ in range(5):
        rest, letter = divmod(rest, 26)
        letters.append(chr(ord("A") + letter))
    return f"{digits:04d}-{''.join(reversed(letters))}"


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Which codes are in sorted_codes."""
    if not len(sorted_codes):
        return np.zeros(len(codes), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[at] == codes


class _Ids:
    """The user ids of a file, in file order, and their lines (kept as the first line of a run of
    consecutive ones: the usual file costs 8 bytes a row)."""

    def __init__(self):
        self._codes: list[np.ndarray] = []
        self._sizes: list[int] = []
        self._lines: list[int | np.ndarray] = []
        self.odd: list[str] = []
        """Ids that are no user ids, as text (a file that has them fails)."""
        self.odd_lines: list[int] = []

    def add(self, ids: pa.Array, lines: np.ndarray) -> None:
        valid, _ = contract.check_texts(schema.KEY_COLUMN, ids)
        if not valid.all():
            self.odd += ids.filter(pa.array(~valid)).to_pylist()
            self.odd_lines += lines[~valid].tolist()
            ids, lines = ids.filter(pa.array(valid)), lines[valid]
        if not len(lines):
            return
        self._codes.append(_id_codes(ids))
        self._sizes.append(len(lines))
        consecutive = int(lines[-1]) - int(lines[0]) == len(lines) - 1  # lines only grow
        self._lines.append(int(lines[0]) if consecutive else lines.astype(np.int64))

    @property
    def codes(self) -> np.ndarray:
        """The code of each id, in file order."""
        if len(self._codes) != 1:
            self._codes = [np.concatenate(self._codes or [np.empty(0, np.int64)])]
        return self._codes[0]

    @property
    def lines(self) -> np.ndarray:
        """The line of each id (made when asked: on the way to an error message)."""
        parts = [
            first if isinstance(first, np.ndarray) else np.arange(first, first + size, dtype=np.int64)
            for first, size in zip(self._lines, self._sizes)
        ]
        return np.concatenate(parts or [np.empty(0, np.int64)])

    def check_duplicates(self, problems: _Problems) -> None:
        """Report each row whose id is on an earlier row too (and that earlier line)."""
        codes = self.codes
        ordered = np.sort(codes)
        if len(codes) > 1 and (ordered[1:] == ordered[:-1]).any():
            del ordered
            lines = self.lines
            sorter = np.argsort(codes, kind="stable")  # equal ids in file order
            ordered = codes[sorter]
            repeat = ordered[1:] == ordered[:-1]
            again = np.flatnonzero(repeat) + 1
            starts = np.flatnonzero(np.concatenate(([True], ~repeat)))
            first = starts[np.searchsorted(starts, again, side="right") - 1]
            rows, first_rows = sorter[again], sorter[first]
            problems.count += len(rows)
            for i in np.argsort(lines[rows], kind="stable")[: problems.limit]:
                what = f"duplicate key: user_id also on line {int(lines[first_rows[i]])}"
                problems.items.append(
                    Problem(problems.path, int(lines[rows[i]]), schema.KEY, what, _id_text(codes[rows[i]]))
                )
        if self.odd:
            _check_duplicates(pa.array(self.odd, pa.string()), np.asarray(self.odd_lines), problems)


# --- files and snapshots -------------------------------------------------------------------------


def check_file(
    path: Path | str,
    table: schema.Table | str,
    *,
    frame: bool = True,
    limit: int = MAX_PROBLEMS,
    chunk_bytes: int | None = None,
) -> CheckedFile:
    """Validate one CSV file; never raises for bad data (see ``.problems``).

    The file is read in chunks of about ``chunk_bytes`` (default ``CHUNK_BYTES``), so memory
    does not grow with it but for its user ids (the checks across rows and files). With ``frame``
    the typed DataFrame (registry dtypes, user_id first) of a valid file is built as well, which
    does grow with it: for small files; ``read_chunks`` gives a big one chunk by chunk.
    """
    path = Path(path)
    table = schema.table(table) if isinstance(table, str) else table
    result = CheckedFile(table=table, path=path, chunk_bytes=chunk_bytes or CHUNK_BYTES)
    problems = _Problems(path, limit)
    try:
        _check_chunks(result, problems, frame)
    except FileNotFoundError:
        problems.add(None, None, f"no such file (expected the {table.name} table here)")
    except OSError as exc:
        problems.add(None, None, f"cannot read the file: {exc.strerror or exc}")
    result.problems = sorted(problems.items, key=lambda p: _order(table, p))[:limit]
    result.problem_count = problems.count
    if not result.ok:
        result.rows, result.digests, result.ids, result.frame = 0, [], None, None
    return result


def _order(table: schema.Table, p: Problem):
    col = table.header.index(p.column) if p.column in table.header else -1
    return (p.line if p.line is not None else math.inf, col)


def _check_chunks(result: CheckedFile, problems: _Problems, frame: bool) -> None:
    """Check a file piece by piece; fill in result (but for its problems)."""
    table = result.table
    order = functools.partial(_order, table)
    with contextlib.closing(_chunks(result.path, result.chunk_bytes)) as chunks:
        first = next(chunks, None)
        pieces: Iterator[_Piece] = chunks
        if first is not None and first.data.isspace():
            second = next(chunks, None)
            if second is None:
                first = None  # blank lines only
            else:
                pieces = itertools.chain([second], chunks)
        if first is None:
            wanted = ",".join(table.header)
            problems.add(1, schema.KEY, f"the file is empty; expected the header '{wanted}'", "")
            return
        found = _header_of(first.data)
        _check_utf8(first.data, found or table.header, problems)  # all of the first piece, header too
        if problems:
            return
        _check_header(found, table, problems)
        if problems:
            return
        ids = _Ids()
        frames: list[pd.DataFrame] = []
        for piece in itertools.chain([first], pieces):
            result.digests.append(_digest(piece.data))
            chunk_problems = _Problems(result.path, problems.limit, shift=piece.first_line - 2)
            rows = _check_rows(table, piece, chunk_problems, utf8_checked=piece is first)
            problems.merge(chunk_problems, order)
            if rows is None:
                continue
            columns, lines, checked = rows
            result.rows += len(lines)
            ids.add(columns[schema.KEY], lines + chunk_problems.shift)
            if frame and not problems:
                frames.append(_frame(table, columns, checked))
            elif frames:
                frames.clear()
    if not problems and result.rows == 0:
        problems.add(2, schema.KEY, "no rows after the header", "")
        return
    duplicates = _Problems(result.path, problems.limit)
    ids.check_duplicates(duplicates)
    problems.merge(duplicates, order)
    if problems:
        return
    result.ids = ids
    if frame:
        result.frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _check_duplicates(user_ids: pa.Array, lines: np.ndarray, problems: _Problems) -> None:
    keys = pd.Series(user_ids.to_numpy(zero_copy_only=False))
    repeated = np.flatnonzero(keys.duplicated(keep="first").to_numpy())
    problems.count += len(repeated)
    first_line: dict[str, int] = {}
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


def read_chunks(checked: CheckedFile, *, frame: bool = False) -> Iterator[Chunk]:
    """The rows of a file that passed ``check_file``, read again chunk by chunk (one in memory).

    Every chunk is checked again and must be byte for byte the one checked before (its digest),
    so only validated rows come out and the checks across rows and files still hold for them. A
    file changed since raises DataValidationError at the first chunk that differs, before that
    chunk is given out (the loader's transaction is then rolled back; the producer stops there).
    """
    if not checked.ok:
        raise ValueError(f"{checked.path} did not pass validation")
    table = checked.table
    read = 0
    try:
        with contextlib.closing(_chunks(checked.path, checked.chunk_bytes)) as chunks:
            for piece in chunks:
                if read >= len(checked.digests) or _digest(piece.data) != checked.digests[read]:
                    _changed(checked, piece.first_line)
                read += 1
                problems = _Problems(checked.path, MAX_PROBLEMS, shift=piece.first_line - 2)
                rows = _check_rows(table, piece, problems)
                if problems:  # not after the same digest; kept as the last guard
                    raise_problems(sorted(problems.items, key=lambda p: _order(table, p)), problems.count)
                if rows is not None:
                    columns, lines, checked_columns = rows
                    typed = _frame(table, columns, checked_columns) if frame else None
                    yield Chunk(piece.rows, piece.first_line, len(lines), typed)
    except OSError as exc:
        what = f"cannot read the file again: {exc.strerror or exc}"
        raise_problems([Problem(checked.path, None, None, what)])
    if read != len(checked.digests):
        _changed(checked, None)


def _changed(checked: CheckedFile, line: int | None) -> None:
    raise_problems(
        [
            Problem(
                checked.path,
                line,
                None,
                "the file changed after it was validated: its rows from here on are not the ones checked",
            )
        ]
    )


def check_user_sets(files: dict[str, CheckedFile], limit: int = MAX_PROBLEMS) -> tuple[list[Problem], int]:
    """Where a file's user_ids differ from users.csv's (files that passed only).

    Returns the first problems of each file and how many there are in all.
    """
    users = files.get(USERS_TABLE)
    if users is None or not users.ok or users.ids is None:
        return [], 0
    ref = users.ids
    ref_sorted: np.ndarray | None = None
    found: list[Problem] = []
    count = 0
    for name, f in files.items():
        if name == USERS_TABLE or not f.ok or f.ids is None:
            continue
        if np.array_equal(f.ids.codes, ref.codes):
            continue  # same users in the same order: the usual case
        if ref_sorted is None:
            ref_sorted = np.sort(ref.codes)
        extra = np.flatnonzero(~_contains(ref_sorted, f.ids.codes))
        missing = np.flatnonzero(~_contains(np.sort(f.ids.codes), ref.codes))
        count += len(extra) + len(missing)
        for i in extra[:limit]:
            found.append(
                Problem(
                    f.path,
                    int(f.ids.lines[i]),
                    schema.KEY,
                    f"user is not in {users.path.name}",
                    _id_text(f.ids.codes[i]),
                )
            )
        for i in missing[:limit]:
            found.append(
                Problem(
                    f.path,
                    None,
                    schema.KEY,
                    f"no row for user '{_id_text(ref.codes[i])}' of {users.path.name} "
                    f"(line {int(ref.lines[i])} there)",
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
        message = f"{total} problems{where}{first}:\n" + "\n".join(f"  {p}" for p in shown)
    raise DataValidationError(message, problems=list(shown))


def check_snapshot(
    folder: Path | str, *, frame: bool = False, chunk_bytes: int | None = None
) -> dict[str, CheckedFile]:
    """Validate the six files of a snapshot folder; raise one DataValidationError for all problems.

    users.csv is checked first; every other file is compared with it as soon as it is checked,
    and its ids are dropped then (so at most two files' ids are held at once).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: no such snapshot folder")
    users_first = sorted(schema.TABLES, key=lambda t: t.name != USERS_TABLE)
    checked: dict[str, CheckedFile] = {}
    cross: dict[str, tuple[list[Problem], int]] = {}
    for t in users_first:
        f = checked[t.name] = check_file(folder / t.file, t, frame=frame, chunk_bytes=chunk_bytes)
        if t.name != USERS_TABLE:
            cross[t.name] = check_user_sets({USERS_TABLE: checked[USERS_TABLE], t.name: f})
            f.ids = None
    checked[USERS_TABLE].ids = None
    files = {t.name: checked[t.name] for t in schema.TABLES}
    problems = [p for f in files.values() for p in f.problems]
    total = sum(f.problem_count for f in files.values())
    problems += [p for t in schema.TABLES for p in cross.get(t.name, ([], 0))[0]]
    total += sum(count for _, count in cross.values())
    raise_problems(problems, total)
    return files


def read_table(path: Path | str, table: schema.Table | str) -> pd.DataFrame:
    """One validated CSV as a DataFrame of the registry's dtypes (raises DataValidationError)."""
    checked = check_file(path, table, frame=True)
    raise_problems(checked.problems, checked.problem_count)
    return checked.frame


def read_snapshot(folder: Path | str) -> dict[str, pd.DataFrame]:
    """The six validated tables of a snapshot folder, by table name (raises DataValidationError).

    Whole tables in memory: for tests and small snapshots. The producer and the loader read a
    snapshot with ``check_snapshot`` then ``read_chunks``, one chunk at a time.
    """
    return {name: f.frame for name, f in check_snapshot(folder, frame=True).items()}


__all__ = [
    "CHUNK_BYTES",
    "MAX_PROBLEMS",
    "CheckedFile",
    "Chunk",
    "Problem",
    "check_file",
    "check_snapshot",
    "check_user_sets",
    "raise_problems",
    "read_chunks",
    "read_snapshot",
    "read_table",
]
