"""Column-wise encoding of pushed frames into the online store's row format, without protobuf objects.

Feast's push path turns every feature value of every row into a ``ValueProto`` object (and every
key into an ``EntityKey`` proto), which our online store then serializes again: about half of
the consumer's time. A row of our online table holds the protobuf encoding of
``RepeatedValue(val=[...])`` for the view's features; that encoding is simple enough to build
per column straight from Arrow arrays.

The bytes must be exactly what Feast's own conversion (``feast.type_map``) followed by
``SerializeToString`` produces, quirks included, so that a row written by ``materialize`` and the
same row pushed by the consumer are byte-identical (the merge then sees "no change"). Feast's
conventions, measured on feast 0.67 (tests/test_value_encoding.py checks them against Feast):

* a null (``None``, ``pd.NA``) and a float ``NaN`` become an empty ``Value`` (no field set);
* ``UNIX_TIMESTAMP`` values are whole seconds, rounded down; a null timestamp (``NaT``) becomes
  ``unix_timestamp_val = -2**63``;
* oneof fields are always written, zero included (``int64_val: 0`` is ``b" \\x00"``).

Only the value types StreamFlow's feature views use are handled (``SUPPORTED``, ``supports``);
anything else goes through Feast's conversion. ``decode_elements`` reads a row back.

This module does not import Feast (its import costs seconds): value types are named as
``feast.ValueType`` names them (``"INT64"``), and a ``ValueType`` member is accepted wherever a
name is.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EMPTY_VALUE = b"\x0a\x00"
"""One RepeatedValue element holding an empty Value (Feast's null)."""

_TAG_STRING = b"\x12"  # Value.string_val, field 2, length-delimited
_TAG_INT64 = b"\x20"  # Value.int64_val, field 4, varint
_TAG_DOUBLE = b"\x29"  # Value.double_val, field 5, 64-bit
_TAG_BOOL = b"\x38"  # Value.bool_val, field 7, varint
_TAG_UNIX_TS = b"\x40"  # Value.unix_timestamp_val, field 8, varint

_NAT_SECONDS = -(2**63)


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of n; negative numbers as their 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_ELEMENT_PREFIX = [b"\x0a" + varint(n) for n in range(16384)]
"""Tag of RepeatedValue.val plus the length varint, for every length under 16 KiB."""


def element(value: bytes) -> bytes:
    """A serialized Value wrapped as one element of RepeatedValue.val (field 1)."""
    n = len(value)
    return (_ELEMENT_PREFIX[n] if n < 16384 else b"\x0a" + varint(n)) + value


@lru_cache(maxsize=1 << 16)
def _int_element(tag: bytes, n: int) -> bytes:
    return element(tag + varint(n))


def _string_element(s: str) -> bytes:
    raw = s.encode("utf-8")
    return element(_TAG_STRING + varint(len(raw)) + raw)


_BOOL_ELEMENTS = {True: element(_TAG_BOOL + b"\x01"), False: element(_TAG_BOOL + b"\x00")}


_BINARY = pa.binary()


def _const(value: bytes) -> pa.Scalar:
    return pa.scalar(value, _BINARY)


_EMPTY = _const(_EMPTY_VALUE)
_NOTHING = _const(b"")


def fixed_width(rows: np.ndarray) -> pa.Array:
    """A binary array from an (n, width) uint8 matrix: row i is element i."""
    n, width = rows.shape
    buffer = pa.py_buffer(np.ascontiguousarray(rows, dtype=np.uint8))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buffer]).cast(_BINARY)


def _uint32_bytes(lengths: pa.Array, byteorder: str) -> pa.Array:
    """Each length as 4 bytes (``"<"`` little-endian, ``">"`` big-endian), a binary array."""
    raw = np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=f"{byteorder}u4")
    return fixed_width(raw.view(np.uint8).reshape(-1, 4))


def concat(*columns: pa.Array | pa.Scalar) -> pa.Array:
    """Row i of the result is the bytes of row i of every column, in order (one Arrow kernel)."""
    return pc.binary_join_element_wise(*columns, _NOTHING)


def _by_distinct(values: pa.Array, encode) -> pa.Array:
    """``encode`` applied to each distinct value once, then laid out per row (most features are
    categories or small counts: a few hundred distinct values in thousands of rows)."""
    codes = values.dictionary_encode()
    elements = pa.array(list(map(encode, codes.dictionary.to_pylist())), _BINARY)
    return pc.take(elements, codes.indices)


def _with_nulls(encoded: pa.Array, array: pa.Array, null: pa.Scalar = _EMPTY) -> pa.Array:
    return pc.if_else(array.is_null(), null, encoded) if array.null_count else encoded


def _encode_int64(array: pa.Array) -> pa.Array:
    values = array.cast(pa.int64()).fill_null(0)
    return _with_nulls(_by_distinct(values, lambda v: _int_element(_TAG_INT64, v)), array)


_DOUBLE_HEAD = np.frombuffer(b"\x0a\x09" + _TAG_DOUBLE, dtype=np.uint8)


def _encode_double(array: pa.Array) -> pa.Array:
    as_float = array.cast(pa.float64()).fill_null(0.0)
    raw = np.asarray(as_float.to_numpy(zero_copy_only=False), dtype="<f8")
    rows = np.empty((len(raw), 11), dtype=np.uint8)
    rows[:, :3] = _DOUBLE_HEAD
    rows[:, 3:] = raw.view(np.uint8).reshape(-1, 8)
    encoded = fixed_width(rows)
    missing = pc.or_kleene(array.is_null(), pc.is_nan(as_float))
    return pc.if_else(missing, _EMPTY, encoded) if pc.any(missing).as_py() else encoded


def _encode_string(array: pa.Array) -> pa.Array:
    strings = array.cast(pa.string()).fill_null("")
    return _with_nulls(_by_distinct(strings, _string_element), array)


_TRUE, _FALSE = _const(_BOOL_ELEMENTS[True]), _const(_BOOL_ELEMENTS[False])


def _encode_bool(array: pa.Array) -> pa.Array:
    values = array.cast(pa.bool_()).fill_null(False)
    return _with_nulls(pc.if_else(values, _TRUE, _FALSE), array)


def _encode_unix_timestamp(array: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        nanos = array.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
        seconds = pa.array(np.floor_divide(nanos.fill_null(0).to_numpy(zero_copy_only=False), 1_000_000_000))
    else:  # already a number of seconds
        seconds = array.cast(pa.int64()).fill_null(0)
    encoded = _by_distinct(seconds, lambda v: _int_element(_TAG_UNIX_TS, v))
    return _with_nulls(encoded, array, null=_const(_int_element(_TAG_UNIX_TS, _NAT_SECONDS)))


_ENCODERS = {
    "INT64": _encode_int64,
    "DOUBLE": _encode_double,
    "STRING": _encode_string,
    "BOOL": _encode_bool,
    "UNIX_TIMESTAMP": _encode_unix_timestamp,
}
SUPPORTED = frozenset(_ENCODERS)
"""Names of the value types encoded here (``feast.ValueType`` member names)."""


def _type_name(value_type: Any) -> str:
    """A ``feast.ValueType`` member's name, or the name itself."""
    return getattr(value_type, "name", value_type)


def supports(value_type: Any) -> bool:
    """Whether a value type (a ``feast.ValueType`` or its name) is encoded here."""
    return _type_name(value_type) in SUPPORTED


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def encode_rows_array(table: pa.Table, features: list[tuple[str, Any]]) -> pa.Array:
    """Per row, the RepeatedValue encoding of the given feature columns, in the given order, as an
    Arrow binary array. Built column by column with Arrow kernels: Python runs once per distinct
    value of a column, not once per row (and Arrow's kernels leave the interpreter lock free for
    the consumer's polling thread).

    features: (column name, value type) pairs; a value type is a ``feast.ValueType`` or its name.
    """
    columns = [_ENCODERS[_type_name(value_type)](_column(table, name)) for name, value_type in features]
    if not columns:
        return pa.array([b""] * table.num_rows, _BINARY)
    return columns[0] if len(columns) == 1 else concat(*columns)


def encode_rows(table: pa.Table, features: list[tuple[str, Any]]) -> list[bytes]:
    """``encode_rows_array`` as a list of bytes."""
    return encode_rows_array(table, features).to_pylist()


_STRING_TYPE = struct.pack("<I", 2)  # feast.ValueType.STRING
_ONE_KEY = struct.pack("<I", 1)
_pack_length = struct.Struct("<I").pack


@lru_cache(maxsize=64)
def _string_key_prefix(join_key: str) -> bytes:
    name = join_key.encode()
    return _ONE_KEY + _STRING_TYPE + _pack_length(len(name)) + name + _STRING_TYPE


def string_entity_key(join_key: str, value: str) -> bytes:
    """Feast's serialize_entity_key (version 3) of an entity with one string join key."""
    raw = value.encode("utf-8")
    return _string_key_prefix(join_key) + _pack_length(len(raw)) + raw


def string_entity_keys_array(join_key: str, array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """string_entity_key of every row of a column, as an Arrow binary array (Arrow kernels)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    raw = array.cast(pa.string()).cast(_BINARY)
    return concat(_const(_string_key_prefix(join_key)), _uint32_bytes(pc.binary_length(raw), "<"), raw)


def string_entity_keys(join_key: str, array: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """string_entity_key of every row of a column."""
    return string_entity_keys_array(join_key, array).to_pylist()


def field_lengths(array: pa.Array) -> pa.Array:
    """Each element's length as PostgreSQL's binary COPY writes it (4 bytes, big-endian)."""
    return _uint32_bytes(pc.binary_length(array), ">")


def joined_bytes(rows: pa.Array) -> bytes:
    """The bytes of every element of a binary array, one after the other."""
    if len(rows) == 0:
        return b""
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
    start, end = int(offsets[rows.offset]), int(offsets[rows.offset + len(rows)])
    return rows.buffers()[2][start:end].to_pybytes()


# --- reading rows back -----------------------------------------------------------------------------

_SCALAR_FIELDS = {
    1: "bytes_val",
    2: "string_val",
    3: "int32_val",
    4: "int64_val",
    5: "double_val",
    6: "float_val",
    7: "bool_val",
    8: "unix_timestamp_val",
    19: "null_val",
}
"""Value's scalar oneof fields by field number (feast/protos/feast/types/Value.proto)."""

_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


def _read_varint(raw: bytes, i: int, end: int | None = None) -> tuple[int, int]:
    """The varint at raw[i:end] and the index after it."""
    end = len(raw) if end is None else end
    n = shift = 0
    while True:
        if i >= end:
            raise ValueError("truncated varint")
        b = raw[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


_SIGNED = frozenset({"int32_val", "int64_val", "unix_timestamp_val"})


def _decode_value(raw: bytes, i: int, end: int) -> tuple[str | None, Any]:
    """(oneof field name, Python value) of the serialized Value at raw[i:end]; (None, None) when no
    field is set.

    Scalars only; any other field comes back as ("field_<number>", its raw bytes or number). When a
    message sets several fields, the last one wins, as in protobuf. One-byte tags and lengths (all
    of a Value's but large varints) are read inline.
    """
    found: tuple[str | None, Any] = (None, None)
    while i < end:
        tag = raw[i]
        i += 1
        if tag >= 0x80:
            tag, i = _read_varint(raw, i - 1, end)
        number, wire = tag >> 3, tag & 7
        name = _SCALAR_FIELDS.get(number) or f"field_{number}"
        if wire == 0:
            if i < end and raw[i] < 0x80:
                n = raw[i]
                i += 1
            else:
                n, i = _read_varint(raw, i, end)
            if name in _SIGNED:
                value: Any = _signed64(n)
                if name == "int32_val":
                    value = (value + (1 << 31)) % (1 << 32) - (1 << 31)
            elif name == "bool_val":
                value = n != 0
            else:
                value = n
        elif wire == 1:
            if i + 8 > end:
                raise ValueError("truncated Value")
            value = _unpack_double(raw, i)[0] if name == "double_val" else raw[i : i + 8]
            i += 8
        elif wire == 5:
            if i + 4 > end:
                raise ValueError("truncated Value")
            value = _unpack_float(raw, i)[0] if name == "float_val" else raw[i : i + 4]
            i += 4
        elif wire == 2:
            if i < end and raw[i] < 0x80:
                n = raw[i]
                i += 1
            else:
                n, i = _read_varint(raw, i, end)
            if i + n > end:
                raise ValueError("truncated Value")
            value = raw[i : i + n]
            if name == "string_val":
                value = value.decode("utf-8")
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        found = (name, value)
    return found


def decode_elements(raw: bytes) -> list[tuple[str | None, Any]]:
    """The values of one online row (a serialized ``RepeatedValue``), without protobuf objects.

    Per element: (oneof field name, Python value), e.g. ("double_val", 29.5), ("bool_val", True),
    ("unix_timestamp_val", 1706659200); (None, None) for an empty Value, Feast's null. Raises
    ValueError on bytes that are not a RepeatedValue.
    """
    out = []
    i = 0
    raw = bytes(raw)
    end = len(raw)
    while i < end:
        if raw[i] != 0x0A:
            tag, _ = _read_varint(raw, i)
            raise ValueError(f"not a RepeatedValue: tag {tag:#x} at byte {i}")
        i += 1
        if i < end and raw[i] < 0x80:
            n = raw[i]
            i += 1
        else:
            n, i = _read_varint(raw, i)
        if i + n > end:
            raise ValueError("truncated RepeatedValue")
        out.append(_decode_value(raw, i, i + n))
        i += n
    return out
