"""Push validation inside Feast: the pushes that did not come through streamflow.feature_store.push.

``feast serve``'s /push and a user's own ``store.push`` reach our provider (online writes) and
our offline store (offline writes) without StreamFlow's check. Both run :func:`checked` first, the
same :func:`streamflow.push_validation.validate_frame` as ``streamflow.feature_store.push``, and
write the typed frame it returns. A bad push raises :class:`InvalidPush`, which ``feast serve``
answers with 422 and ``{"detail": "<our message>"}`` (the message names the push, the row, the
user and the field).

How the status is chosen, without touching Feast: Feast's feature server is a FastAPI app with
one exception handler of its own, for ``Exception``, which answers ``exc.http_status_code()`` for a
``feast.errors.FeastError`` and 500 for anything else. Starlette runs that catch-all handler in
its outermost middleware and then re-raises the exception, so every such answer is also logged as
"Exception in ASGI application" with a traceback, and the server closes the connection. Every
FastAPI app also handles ``HTTPException`` (FastAPI registers that handler by default, inside the
routing layer) by answering its status and detail, quietly, keeping the connection. InvalidPush is
an ``HTTPException`` with status 422, so that handler answers it; it is also a FeastError whose
``http_status_code()`` is 422, Feast's own convention, for any Feast path that reports FeastErrors
itself. And it stays a ``PushValidationError`` for StreamFlow's callers.
"""

from __future__ import annotations

import pandas as pd
from feast.errors import FeastError
from starlette.exceptions import HTTPException

from streamflow import schema
from streamflow.push_validation import PushValidationError, validate_frame

STATUS = 422
"""Unprocessable content: well-formed JSON whose frame does not match the registry."""


class InvalidPush(PushValidationError, FeastError, HTTPException):
    """A pushed frame that does not match its table in the registry (422 from feast serve)."""

    def __init__(
        self, message: str, field: str | None = None, rule: str | None = None, row: int | None = None
    ):
        Exception.__init__(self, message)
        HTTPException.__init__(self, STATUS, detail=message)
        self.field, self.rule, self.row = field, rule, row

    def __str__(self) -> str:
        return self.detail

    def http_status_code(self) -> int:
        return STATUS

    def grpc_status_code(self):
        from grpc import StatusCode

        return StatusCode.INVALID_ARGUMENT


def registry_table(feature_view) -> schema.Table | None:
    """The registry table of a feature view, or None for a view StreamFlow does not declare."""
    try:
        return schema.table_for_feature_view(feature_view.name)
    except KeyError:
        return None


def checked(feature_view, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The frame validated against the view's registry table and typed (times in UTC), unless
    streamflow.feature_store.push validated it already or the view is not one of ours."""
    from streamflow.feature_store import push_is_validated

    table = registry_table(feature_view)
    if table is None or push_is_validated():
        return frame
    try:
        return validate_frame(table, frame, where=where)
    except InvalidPush:
        raise
    except PushValidationError as exc:
        raise InvalidPush(str(exc), exc.field, exc.rule, exc.row) from None
