"""The hot route without the framework: `GET /features/{user_id}` answered in plain ASGI.

Under ten or fifty clients at once, FastAPI's per-request work (routing through every route,
dependency solving, parameter validation, response wrapping) cost about 0.3 ms of the event
loop per request, several times the database read, and a burst of requests queued behind it.
This layer, placed in front of FastAPI's router, answers the common form of the most frequent
request itself and hands every other request, unchanged, to FastAPI:

* ``GET /features/{user_id}`` where the id keeps the registry's contract (``schema.KEY_COLUMN``)
  and the query string is empty or exactly one ``features=...``: answered here, through the
  same :class:`api.batcher.LookupBatcher`, the same selection parser, the same JSON shape
  (:func:`api.feature_routes.user_body`) and the same error bodies (400, 404, 503);
* ``GET /predict/{user_id}`` with a valid id and no query string: answered here by
  :func:`api.predict_routes.one_prediction`, the function FastAPI's route answers with;
* anything else (another method or path, a malformed id, other query parameters): FastAPI's
  route, which stays the reference and the OpenAPI description. tests/test_api.py checks that
  both give the same answers to the same requests.

The metrics, authentication and error middlewares sit outside this layer and see its requests
like any other; it labels them with the route templates ``/features/{user_id}`` and
``/predict/{user_id}``.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import orjson

from api.feature_routes import not_found_detail, user_body
from api.features import FeaturesUnavailable, UnknownFeatures, parse_selection
from api.predict_routes import one_prediction
from streamflow import contract, schema

_check_id = contract.checker(schema.KEY_COLUMN)


def _valid_id(user_id: str) -> bool:
    try:
        _check_id(user_id)
    except contract.Violation:
        return False
    return True


ROUTE = "/features/{user_id}"
PREFIX = "/features/"
PREDICT_ROUTE = "/predict/{user_id}"
PREDICT_PREFIX = "/predict/"


class _RouteTemplate:
    """What the metrics middleware reads of a matched route (``scope["route"].path``)."""

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTE = _RouteTemplate(ROUTE)
_PREDICT_ROUTE = _RouteTemplate(PREDICT_ROUTE)
_FALL_THROUGH = object()


def selection_of(query_string: bytes) -> object:
    """The feature selection of a query string this layer answers (None: every feature), or
    ``_FALL_THROUGH`` for any other query string (left to FastAPI)."""
    if not query_string:
        return None
    name, sep, value = query_string.partition(b"=")
    if name != b"features" or not sep or b"&" in value or b";" in value:
        return _FALL_THROUGH
    try:
        text = unquote_plus(value.decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return _FALL_THROUGH
    return parse_selection(text)


def _headers(body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    return [*extra, (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]


class FeatureFastPath:
    """ASGI middleware: answers the common `GET /features/{user_id}` (see the module)."""

    def __init__(self, app, state) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: batcher and metrics, set by create_app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path.startswith(PREFIX):
                user_id = path[len(PREFIX) :]
                if _valid_id(user_id):
                    selection = selection_of(scope.get("query_string", b""))
                    if selection is not _FALL_THROUGH:
                        scope["route"] = _ROUTE
                        await self._answer(user_id, selection, send)  # type: ignore[arg-type]
                        return
            elif path.startswith(PREDICT_PREFIX) and not scope.get("query_string"):
                user_id = path[len(PREDICT_PREFIX) :]
                if _valid_id(user_id):
                    scope["route"] = _PREDICT_ROUTE
                    await self._predict(user_id, send)
                    return
        await self.app(scope, receive, send)

    async def _predict(self, user_id: str, send) -> None:
        status, payload, headers = await one_prediction(self.state, user_id)
        extra = tuple((name.lower().encode(), value.encode()) for name, value in headers)
        await send({"type": "http.response.start", "status": status, "headers": _headers(payload, extra)})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, user_id: str, selection: list[str] | None, send) -> None:
        state = self.state
        extra: tuple[tuple[bytes, bytes], ...] = ()
        body: bytes | dict[str, str]
        try:
            [result] = await state.batcher.lookup([user_id], selection)
        except UnknownFeatures as exc:
            status, body = 400, {"error": "unknown_feature", "detail": str(exc)}
        except FeaturesUnavailable as exc:
            status, body = 503, {"error": "unavailable", "detail": str(exc)}
            extra = ((b"retry-after", b"1"),)
        else:
            state.metrics.users.labels("found" if result.found else "not_found").inc()
            if result.found:
                status, body = 200, user_body(result)
            else:
                status = 404
                body = {"error": "not_found", "detail": not_found_detail(user_id, selection is not None)}
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        await send({"type": "http.response.start", "status": status, "headers": _headers(payload, extra)})
        await send({"type": "http.response.body", "body": payload})
