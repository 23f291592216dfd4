"""Feature endpoints of the API: `GET /features/{user_id}` and `POST /features`.

``async`` endpoints: the lookups go through the app's :class:`api.batcher.LookupBatcher`
(``app.state.batcher``), which reads the users of concurrent requests together on threads of its
own, so the blocking psycopg calls never run on the event loop. The metrics are
``app.state.metrics``.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from api import models
from api.errors import RESPONSES, error
from api.features import MAX_BATCH, UserResult, parse_selection

router = APIRouter(tags=["features"])

SELECTION = Query(
    description="Comma-separated view:feature names to return (default: every feature of the service), "
    "e.g. subs_profile_fv:contract_type,usage_agg_30d_fv:watch_hours_30d",
)
USER_ID = Path(description="A user id, e.g. 7590-VHVEG")


class JSONBytes(Response):
    """A JSON answer serialized once with orjson (the response models document its shape).

    Returning it from an endpoint skips FastAPI's re-validation through the response model,
    which cost more than the database read; tests check the bodies against the models.
    """

    media_type = "application/json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
"""Datetimes as ``...Z`` (a naive one taken as UTC), as ``streamflow.timefmt.iso_utc`` writes them."""


def user_body(result: UserResult) -> bytes:
    """The JSON of models.UserFeatures for one user.

    orjson writes the dataclasses UserResult and ViewResult themselves, field by field in the order
    of the models' fields; their event times are UTC (FeatureReader.lookup), written ``...Z``.
    tests/test_api.py checks the bodies against the models.
    """
    return orjson.dumps(result, option=JSON_OPTIONS)


def batch_body(results: list[UserResult]) -> tuple[bytes, int]:
    """The JSON of models.BatchFeatures for these users, and how many were found."""
    found = sum(r.found for r in results)
    body = {"results": results, "found": found, "not_found": len(results) - found}
    return orjson.dumps(body, option=JSON_OPTIONS), found


def not_found_detail(user_id: str, selected: bool) -> str:
    what = "none of the requested features" if selected else "no features"
    return f"user {user_id} has {what} in the online store"


@router.get(
    "/features/{user_id}",
    response_model=models.UserFeatures,
    responses={k: RESPONSES[k] for k in (400, 404, 422, 503)},
    summary="Online features of one user",
)
async def get_features(
    request: Request,
    user_id: Annotated[models.UserId, USER_ID],
    features: Annotated[str | None, SELECTION] = None,
):
    state = request.app.state
    [result] = await state.batcher.lookup([user_id], parse_selection(features))
    state.metrics.users.labels("found" if result.found else "not_found").inc()
    if not result.found:
        return error(404, "not_found", not_found_detail(user_id, features is not None))
    return JSONBytes(user_body(result))


@router.post(
    "/features",
    response_model=models.BatchFeatures,
    responses={k: RESPONSES[k] for k in (400, 413, 422, 503)},
    summary=f"Online features of up to {MAX_BATCH} users",
)
async def post_features(request: Request, body: models.FeaturesRequest):
    state = request.app.state
    # built and serialized on the lookup thread: a 1,000-user answer never occupies the event loop
    payload, found = await state.batcher.lookup_rendered(body.user_ids, body.features, batch_body)
    state.metrics.users.labels("found").inc(found)
    state.metrics.users.labels("not_found").inc(len(body.user_ids) - found)
    return JSONBytes(payload)
