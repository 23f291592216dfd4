"""Churn scores: `GET /predict/{user_id}` and `POST /predict`.

A user's 14 model features are read like any lookup (the app's :class:`api.batcher.LookupBatcher`,
selection :func:`streamflow.churn.features.refs`), then scored by the champion that serves at that
moment (``app.state.champion``, a :class:`streamflow.churn.scoring.ChampionWatcher`). Scoring and
the JSON answer are made on the lookup thread (``lookup_rendered``), never on the event loop.

A user the online store does not know is a 404 on `GET`; a user with some feature missing is
answered with ``churn_probability: null`` and the missing features named, never with a guess.
No champion (none registered yet, or still loading) is a 503 saying so.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Request

from api import models
from api.errors import RESPONSES
from api.feature_routes import JSON_OPTIONS, JSONBytes
from api.features import MAX_BATCH, FeaturesUnavailable, UserResult
from streamflow.churn import features

router = APIRouter(tags=["predictions"])

USER_ID = Path(description="A user id, e.g. 7590-VHVEG")
SELECTION = features.refs()


def _render(champion, metrics):
    """The function that scores the users of one request and builds its answer (on a lookup thread)."""
    model = {"name": champion.version.name, "version": champion.version.version}

    def render(results: list[UserResult]) -> tuple[list[dict], int]:
        rows = [{n: v for view in r.views.values() for n, v in view.features.items()} for r in results]
        scored = champion.score([r.user_id for r in results], rows)
        answers = []
        for result, score in zip(results, scored):
            if score.probability is not None:
                metrics.scores.observe(score.probability)
            answers.append(
                {
                    "user_id": result.user_id,
                    "churn_probability": score.probability,
                    "missing_features": score.missing,
                    "model": model,
                    "views": result.views,
                }
            )
        return answers, sum(s.probability is not None for s in scored)

    return render


@router.get(
    "/scores",
    response_model=models.ScoreDistribution,
    summary="The churn probabilities this process has answered, by decile",
)
async def score_distribution(request: Request):
    state = request.app.state
    watcher = getattr(state, "champion", None)
    current = watcher.current if watcher is not None else None
    total, buckets = state.metrics.score_distribution()
    model = {"name": current.version.name, "version": current.version.version} if current else None
    return JSONBytes(orjson.dumps({"model": model, "total": total, "buckets": buckets}))


@router.get(
    "/predict/{user_id}",
    response_model=models.Prediction,
    responses={k: RESPONSES[k] for k in (404, 422, 503)},
    summary="Churn probability of one user",
)
async def get_prediction(request: Request, user_id: Annotated[models.UserId, USER_ID]):
    status, payload, headers = await one_prediction(request.app.state, user_id)
    return JSONBytes(payload, status_code=status, headers=dict(headers))


Headers = tuple[tuple[str, str], ...]


def _error(status: int, code: str, detail: str, headers: Headers = ()) -> tuple[int, bytes, Headers]:
    return status, orjson.dumps({"error": code, "detail": detail}), headers


def _champion(state):
    """The champion that serves now, and None; or None and the 503 answer saying why none serves
    (the API started without one, or it is still loading)."""
    watcher = getattr(state, "champion", None)
    if watcher is None:
        return None, _error(503, "unavailable", "this API serves no model (started without one)")
    if watcher.current is None:
        return None, _error(
            503, "unavailable", watcher.problem or "the model is loading", (("Retry-After", "5"),)
        )
    return watcher.current, None


async def one_prediction(state, user_id: str) -> tuple[int, bytes, Headers]:
    """The answer to `GET /predict/{user_id}` for a valid id: status, JSON body and extra headers.

    The route above and api.fast_path both answer with it, so they cannot differ: 200 with the
    prediction; 404 when the online store has none of the model's features for the user; 503 with
    ``Retry-After`` when no model serves yet or the online store cannot be read.
    """
    champion, refused = _champion(state)
    if refused is not None:
        return refused
    try:
        answers, _ = await state.batcher.lookup_rendered(
            [user_id], SELECTION, _render(champion, state.metrics)
        )
    except FeaturesUnavailable as exc:
        return _error(503, "unavailable", str(exc), (("Retry-After", "1"),))
    [answer] = answers
    if not any(view.found for view in answer["views"].values()):
        return _error(
            404, "not_found", f"user {user_id} has none of the model's features in the online store"
        )
    return 200, orjson.dumps(answer, option=JSON_OPTIONS), ()


@router.post(
    "/predict",
    response_model=models.BatchPrediction,
    responses={
        400: {"model": models.ErrorResponse, "description": "The body is not JSON"},
        **{k: RESPONSES[k] for k in (413, 422, 503)},
    },
    summary=f"Churn probabilities of up to {MAX_BATCH} users",
)
async def post_predictions(request: Request, body: models.PredictRequest):
    state = request.app.state
    champion, refused = _champion(state)
    if refused is not None:
        status, payload, headers = refused
        return JSONBytes(payload, status_code=status, headers=dict(headers))
    render = _render(champion, state.metrics)

    def batch(results: list[UserResult]) -> bytes:
        answers, scored = render(results)
        doc = {"results": answers, "scored": scored, "not_scored": len(answers) - scored}
        return orjson.dumps(doc, option=JSON_OPTIONS)

    return JSONBytes(await state.batcher.lookup_rendered(body.user_ids, SELECTION, batch))
