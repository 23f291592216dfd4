"""The API's errors: JSON bodies (:class:`api.models.ErrorResponse`), never internals."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import models
from api.features import MAX_BATCH, FeaturesUnavailable, UnknownFeatures

log = logging.getLogger("api")

RESPONSES = {
    400: {"model": models.ErrorResponse, "description": "Unknown feature name in the selection"},
    404: {"model": models.ErrorResponse, "description": "The user has no features in the online store"},
    413: {"model": models.ErrorResponse, "description": "Request body over 256 KiB (api.limits)"},
    422: {"model": models.ErrorResponse, "description": "Malformed request (user id, body, limit)"},
    503: {
        "model": models.ErrorResponse,
        "description": "PostgreSQL or the Feast registry is not reachable, or the lookup queue is full",
    },
}
"""OpenAPI descriptions of the error answers, by status."""


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors()[:10]:
        loc = [str(p) for p in err.get("loc", ())]
        where = " ".join(loc[:1]) + (" " + ".".join(loc[1:]) if len(loc) > 1 else "")
        if err.get("type") == "too_long" and loc[-1:] == ["user_ids"]:
            got = err.get("input")
            msg = f"at most {MAX_BATCH} user ids per request" + (
                f" (got {len(got)})" if isinstance(got, (list, tuple)) else ""
            )
        elif err.get("type") == models.CONTRACT_ERROR:
            msg = str(err.get("ctx", {}).get("message", err.get("msg", "invalid")))
        else:
            msg = err.get("msg", "invalid")
        problems.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


async def invalid_request(request: Request, exc: RequestValidationError):
    return error(422, "invalid_request", describe_validation(exc))


async def http_error(request: Request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def unknown_features(request: Request, exc: UnknownFeatures):
    return error(400, "unknown_feature", str(exc))


async def unavailable(request: Request, exc: FeaturesUnavailable):
    return error(503, "unavailable", str(exc), headers={"Retry-After": "1"})


async def internal_error(request: Request, exc: Exception):
    # Only reached for errors outside MetricsMiddleware (which answers the others itself).
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, "internal_error", "internal server error")


def add_exception_handlers(app: FastAPI) -> None:
    """Answer every error with JSON: validation 422, HTTP errors, 400, 503 and a bare 500."""
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownFeatures, unknown_features)  # type: ignore[arg-type]
    app.add_exception_handler(FeaturesUnavailable, unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
