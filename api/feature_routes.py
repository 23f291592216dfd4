"""Feature endpoints of the API: `GET /features/{user_id}` and `POST /features`.

``async`` endpoints: the lookups go through the app's :class:`api.batcher.LookupBatcher`
(``app.state.batcher``), which reads the users of concurrent requests together on threads of its
own, so the blocking psycopg calls never run on the event loop. The metrics are
``app.state.metrics``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from api import models
from api.errors import RESPONSES, error
from api.features import MAX_BATCH, UserResult, iso_utc, parse_selection

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


_ISO_TEXT: dict[datetime, str] = {}
_ISO_TEXT_MAX = 65_536


def iso_text(ts: datetime) -> str:
    """``iso_utc(ts)``, remembered: many rows share an event time (a snapshot's day), and
    converting and formatting a zoned datetime cost 2.2 us, a tenth of a lookup's loop time."""
    text = _ISO_TEXT.get(ts)
    if text is None:
        if len(_ISO_TEXT) >= _ISO_TEXT_MAX:
            _ISO_TEXT.clear()
        text = _ISO_TEXT[ts] = iso_utc(ts)
    return text


def user_json(result: UserResult) -> dict:
    """The JSON shape of models.UserFeatures."""
    return {
        "user_id": result.user_id,
        "found": result.found,
        "views": {
            name: {
                "found": v.found,
                "event_timestamp": iso_text(v.event_timestamp) if v.event_timestamp else None,
                "age_seconds": v.age_seconds,
                "features": v.features,
            }
            for name, v in result.views.items()
        },
    }


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
    return JSONBytes(user_json(result))


@router.post(
    "/features",
    response_model=models.BatchFeatures,
    responses={k: RESPONSES[k] for k in (400, 413, 422, 503)},
    summary=f"Online features of up to {MAX_BATCH} users",
)
async def post_features(request: Request, body: models.FeaturesRequest):
    state = request.app.state
    results = await state.batcher.lookup(body.user_ids, body.features)
    found = sum(r.found for r in results)
    state.metrics.users.labels("found").inc(found)
    state.metrics.users.labels("not_found").inc(len(results) - found)
    return JSONBytes(
        {"results": [user_json(r) for r in results], "found": found, "not_found": len(results) - found}
    )
