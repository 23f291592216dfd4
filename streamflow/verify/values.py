"""What "equal" means when ``streamflow verify`` compares an online value with an offline one.

Online values are elements of an online row, decoded by ``value_encoding.decode_elements`` into
(protobuf field, Python value); offline values are what psycopg reads from the snapshot table's
column, typed by the registry (TEXT -> str, BIGINT -> int, DOUBLE PRECISION -> float,
BOOLEAN -> bool, DATE -> date). An online value equals an offline one when, by column kind:

* NULL: the online Value is empty (Feast's null, also what a NaN becomes) or ``null_val``, and
  the offline value is NULL (or a NaN). A null timestamp (``-2**63`` seconds) is NULL too.
* ``category``, ``integer``, ``boolean``: the online field is of that kind (``string_val``;
  ``int64_val``/``int32_val``; ``bool_val``) and the values are equal (so ``True`` never equals 1).
* ``float``: ``double_val`` equal to the offline float64 as a number (``==``: no tolerance, both
  sides hold the same IEEE double, parsed from the same text or carried by Arrow; -0.0 equals
  0.0); a ``float_val`` (a Float32 feature) equals the offline value rounded to float32.
* ``date``: ``unix_timestamp_val`` whose UTC calendar day is the offline DATE: the day the API
  shows for it (api/features.py ``decode_value``).

An online value of another field (a string for an int column, ...) or a feature the online row
does not have is never equal. Offline and snapshot values are compared in SQL, both in the
column's SQL type, with ``IS DISTINCT FROM`` (exact; NULL equals NULL).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np

VALUE_TYPES = {
    "category": "STRING",
    "integer": "INT64",
    "float": "DOUBLE",
    "boolean": "BOOL",
    "date": "UNIX_TIMESTAMP",
}
"""Column kind -> Feast value type name of its feature (feature_repo.definitions.FEAST_TYPES)."""

FIELDS = {
    "category": ("string_val",),
    "integer": ("int64_val", "int32_val"),
    "float": ("double_val", "float_val"),
    "boolean": ("bool_val",),
    "date": ("unix_timestamp_val",),
}
"""Column kind -> the Value fields that can hold it."""

NULL_TIMESTAMP = -(2**63)
MISSING: tuple[str | None, Any] = ("<missing>", None)
"""The element of a feature the online row does not have."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _is_null(field: str | None, raw: Any) -> bool:
    return field is None or field == "null_val" or (field == "unix_timestamp_val" and raw == NULL_TIMESTAMP)


def _day(seconds: int) -> date:
    return (_EPOCH + timedelta(seconds=seconds)).date()


def offline_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def online_equals(kind: str, element: tuple[str | None, Any], offline: Any) -> bool:
    """Whether an online element equals an offline value (see the module's rules)."""
    field, raw = element
    if _is_null(field, raw):
        return offline_null(offline)
    if field not in FIELDS[kind] or offline_null(offline):
        return False
    if kind == "float":
        if not math.isfinite(raw):
            return False  # Feast writes a NaN as null; an inf offline is refused by validation
        return raw == (float(np.float32(offline)) if field == "float_val" else offline)
    if kind == "date":
        try:
            return _day(raw) == (offline.date() if isinstance(offline, datetime) else offline)
        except OverflowError:
            return False
    return raw == offline and type(raw) is type(offline)


def show_online(kind: str, element: tuple[str | None, Any]) -> Any:
    """An online element as JSON, as the API shows it (dates as ISO days); other fields tagged."""
    field, raw = element
    if element is MISSING:
        return "<missing>"
    if _is_null(field, raw):
        return None
    if field not in FIELDS[kind]:
        return f"<{field} {raw.hex() if isinstance(raw, bytes) else raw!r}>"
    if kind == "date":
        try:
            return _day(raw).isoformat()
        except OverflowError:
            return f"<unix_timestamp_val {raw}>"
    if kind == "float" and not math.isfinite(raw):
        return None
    return raw


def show(value: Any) -> Any:
    """An offline or snapshot value, or a timestamp, as JSON."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
