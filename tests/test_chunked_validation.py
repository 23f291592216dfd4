"""Validation in chunks says what validation of the whole file says (issue 12, item 5).

The producer and the loader read a snapshot in chunks of whole lines (``validate.CHUNK_BYTES``)
so that their memory does not grow with it. Here the chunks are made a few hundred bytes, so that
every file is many chunks, and checked against a chunk bigger than any file:

* every bad file of the bad-input corpora (tests/test_bad_input.py, tests/test_loader.py) gets the
  same error message, word for word;
* the line named is right for a bad row at the first and last row of a chunk and at the last line
  of the file; duplicates and users missing from a file are found across chunks;
* ``read_chunks`` gives back exactly the validated rows, typed as ``read_table`` types them, and
  refuses a file that changed after it was validated, naming the first line that differs.

No broker or database needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from streamflow import schema
from streamflow.batch import validate
from streamflow.datagen.generate import generate
from streamflow.errors import DataValidationError
from tests import test_bad_input, test_loader

USERS = 400
SMALL = 700
"""Bytes per chunk: about 15 to 40 lines of a generated file."""
WHOLE = 1 << 30


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chunked")
    generate(out, users=USERS, seed=5, snapshots=["month_000"], progress=False)
    return out / "month_000"


def message(folder: Path, chunk_bytes: int) -> str:
    with pytest.raises(DataValidationError) as info:
        validate.check_snapshot(folder, chunk_bytes=chunk_bytes)
    return str(info.value)


def copy_with(snapshot: Path, dest: Path, table: str, mutate) -> Path:
    shutil.copytree(snapshot, dest)
    path = dest / f"{table}.csv"
    path.write_bytes(mutate(path.read_bytes()))
    return path


def chunk_lines(path: Path, chunk_bytes: int = SMALL) -> list[int]:
    """The file line of the first row of each chunk."""
    return [piece.first_line for piece in validate._chunks(path, chunk_bytes)]


# --- the same message as for the whole file --------------------------------------------------------


@pytest.mark.slow  # 35 files read a line at a time: about 2 minutes (make test runs it, make check not)
@pytest.mark.parametrize("case", list(test_bad_input.BAD_FILES))
def test_bad_input_corpus_same_message_in_chunks(case, snapshot, tmp_path):
    table, mutate, fragments = test_bad_input.BAD_FILES[case]
    path = copy_with(snapshot, tmp_path / "month_000", table, mutate)
    whole = message(path.parent, WHOLE)
    for fragment in fragments:
        if f"line {test_bad_input.USERS + 2}" not in fragment:  # that corpus has 100 users, not 400
            assert fragment in whole, (fragment, whole[:500])
    assert message(path.parent, SMALL) == whole
    assert message(path.parent, 64) == whole  # a chunk per line


@pytest.mark.parametrize("case", list(test_loader.BAD_FILES))
def test_loader_corpus_same_message_in_chunks(case, tmp_path):
    mutate, raw, file, fragments = test_loader.BAD_FILES[case]
    bad = test_loader.write_bad_snapshot(tmp_path / "month_001", mutate, raw)
    whole = message(bad, WHOLE)
    for fragment in fragments:
        assert fragment in whole, (fragment, whole)
    for size in (1, 40, 100):
        assert message(bad, size) == whole, size


def test_many_problems_across_chunks_are_counted_and_the_first_shown(snapshot, tmp_path):
    def mutate(data: bytes) -> bytes:
        return data.replace(b",True\n", b",yes\n")

    path = copy_with(snapshot, tmp_path / "month_000", "labels", mutate)
    whole = message(path.parent, WHOLE)
    assert whole == message(path.parent, SMALL)
    bad = path.read_bytes().count(b",yes\n")
    assert whole.startswith(f"{bad} problems; the first 10:")
    assert "labels.csv, line 2, column churn_label" in whole or "line 3, column churn_label" in whole


# --- lines across chunk boundaries -----------------------------------------------------------------


def test_bad_value_names_its_line_at_chunk_boundaries(snapshot, tmp_path):
    source = snapshot / "payments_agg_90d.csv"
    starts = chunk_lines(source)
    assert len(starts) > 5
    last_line = USERS + 1
    lines = {2, starts[1], starts[1] - 1, starts[len(starts) // 2], starts[-1], starts[-1] - 1, last_line}
    for line in sorted(lines):
        mutate = test_bad_input.set_cell(line, "failed_payments_90d", b"many", "payments_agg_90d")
        path = copy_with(snapshot, tmp_path / f"line_{line}" / "month_000", "payments_agg_90d", mutate)
        text = message(path.parent, SMALL)
        assert (
            text == f"{path}, line {line}, column failed_payments_90d: "
            "expected an integer from 0 to 1000 (got 'many')"
        )


def test_bad_lines_in_many_chunks_are_all_counted(snapshot, tmp_path):
    bad_lines = list(range(2, USERS + 2, 37))

    def mutate(data: bytes) -> bytes:
        for line in bad_lines:
            data = test_bad_input.set_cell(line, "support_tickets_90d", b"-1", "support_agg_90d")(data)
        return data

    path = copy_with(snapshot, tmp_path / "month_000", "support_agg_90d", mutate)
    text = message(path.parent, SMALL)
    assert text == message(path.parent, WHOLE)
    assert text.startswith(f"{len(bad_lines)} problems; the first 10:")
    assert [f"line {n}," for n in bad_lines[:10]] == [p.split(", ")[1] + "," for p in text.splitlines()[1:]]


def test_duplicate_in_the_last_chunk_of_a_row_in_the_first(snapshot, tmp_path):
    path = copy_with(snapshot, tmp_path / "month_000", "labels", test_bad_input.duplicate_line(3))
    text = message(path.parent, SMALL)
    assert f"labels.csv, line {USERS + 2}, column user_id: duplicate key: user_id also on line 3" in text
    assert chunk_lines(path)[-1] > 3  # the two rows are chunks apart


def test_user_missing_from_a_file_and_one_too_many_across_chunks(snapshot, tmp_path):
    users = pd.read_csv(snapshot / "users.csv", dtype=str)[schema.KEY].tolist()
    gone = 250  # the row of users[gone - 2] is on line `gone`

    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\n")
        del lines[gone - 1]
        return b"\n".join(lines).rstrip(b"\n") + b"\n1234-QQQQQ,0,1.5\n"

    path = copy_with(snapshot, tmp_path / "month_000", "support_agg_90d", mutate)
    text = message(path.parent, SMALL)
    assert text == message(path.parent, WHOLE)
    assert f"{path}, line {USERS + 1}, column user_id: user is not in users.csv (got '1234-QQQQQ')" in text
    missing = f"no row for user '{users[gone - 2]}' of users.csv (line {gone} there)"
    assert f"{path}, column user_id: {missing}" in text


def test_quoted_value_with_a_line_break_is_one_record(snapshot, tmp_path):
    """A chunk never ends inside quotes: the record with a quoted line break is read whole."""
    line = 200
    mutate = test_bad_input.set_cell(line, "user_gender", b'"Fe\nmale"', "users")
    path = copy_with(snapshot, tmp_path / "month_000", "users", mutate)
    text = message(path.parent, SMALL)
    assert text == message(path.parent, WHOLE)
    assert f"users.csv, line {line}, column user_gender: expected one of 'Female', 'Male'" in text


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_other_line_endings_in_chunks_read_like_unix_ones(snapshot, tmp_path, newline):
    path = copy_with(snapshot, tmp_path / "month_000", "subscriptions", lambda d: d.replace(b"\n", newline))
    expected = validate.read_table(snapshot / "subscriptions.csv", "subscriptions")
    checked = validate.check_file(path, "subscriptions", frame=True, chunk_bytes=SMALL)
    assert checked.ok and len(checked.digests) > 10
    pd.testing.assert_frame_equal(checked.frame, expected)


# --- the second pass -----------------------------------------------------------------------------


def test_read_chunks_gives_the_validated_rows(snapshot):
    for table in schema.TABLES:
        path = snapshot / table.file
        checked = validate.check_file(path, table, frame=False, chunk_bytes=SMALL)
        chunks = list(validate.read_chunks(checked, frame=True))
        assert len(chunks) == len(checked.digests) > 5
        header, _, rows = path.read_bytes().partition(b"\n")
        assert b"".join(bytes(c.data) for c in chunks) == rows  # what the loader COPYs
        assert [c.first_line for c in chunks] == chunk_lines(path)
        assert sum(c.rows for c in chunks) == checked.rows == USERS
        frame = pd.concat([c.frame for c in chunks], ignore_index=True)
        pd.testing.assert_frame_equal(frame, validate.read_table(path, table))


@pytest.mark.parametrize("change", ["a bad value", "a good value", "a row less", "a row more"])
def test_read_chunks_refuses_a_file_changed_after_validation(snapshot, tmp_path, change):
    path = tmp_path / "labels.csv"
    shutil.copy(snapshot / "labels.csv", path)
    checked = validate.check_file(path, "labels", frame=False, chunk_bytes=SMALL)
    starts = chunk_lines(path)
    data = path.read_bytes()
    last = USERS + 1
    if change == "a bad value":
        data = test_bad_input.set_cell(last, "churn_label", b"maybe", "labels")(data)
    elif change == "a good value":
        flip = {b"True": b"False", b"False": b"True"}
        value = data.rstrip(b"\n").rsplit(b",", 1)[1]
        data = test_bad_input.set_cell(last, "churn_label", flip[value], "labels")(data)
    elif change == "a row less":
        data = data.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n"
    else:
        data += b"1234-QQQQQ,True\n"
    path.write_bytes(data)
    given = []
    with pytest.raises(DataValidationError) as info:
        for chunk in validate.read_chunks(checked):
            given.append(chunk)
    text = str(info.value)
    assert "the file changed after it was validated" in text and str(path) in text
    if change != "a row more":
        assert f", line {starts[-1]}: " in text  # the last chunk, the one that changed
    assert len(given) < len(checked.digests) or change == "a row more"
    assert b"maybe" not in b"".join(bytes(c.data) for c in given)


def test_id_codes_are_exact_and_sort_like_the_ids():
    import pyarrow as pa

    ids = ["0000-AAAAA", "0000-AAAAB", "0000-AAABA", "0001-AAAAA", "7590-VHVEG", "9999-ZZZZZ"]
    codes = validate._id_codes(pa.array(ids))
    assert [validate._id_text(c) for c in codes] == ids
    assert list(codes) == sorted(codes) and len(set(codes.tolist())) == len(ids)
    sliced = pa.array(["x", *ids])[1:]  # an array with an offset
    assert validate._id_codes(sliced).tolist() == codes.tolist()
