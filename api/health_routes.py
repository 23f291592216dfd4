"""Operations endpoints of the API: `GET /health`, `GET /ready` and `GET /metrics`."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api import models
from api.features import FeaturesUnavailable

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=models.Health, summary="Liveness")
async def health():
    return models.Health()


@router.get(
    "/ready",
    response_model=models.Readiness,
    responses={503: {"model": models.Readiness, "description": "A dependency is not reachable"}},
    summary="Readiness: PostgreSQL and the Feast registry answer",
)
def ready(request: Request):
    reader = request.app.state.reader
    checks: dict[str, models.CheckResult] = {}
    for name, check in (("postgres", reader.check_postgres), ("feast_registry", reader.check_registry)):
        started = time.perf_counter()
        try:
            check()
            checks[name] = models.CheckResult(ok=True, seconds=round(time.perf_counter() - started, 4))
        except FeaturesUnavailable as exc:
            checks[name] = models.CheckResult(
                ok=False, detail=str(exc), seconds=round(time.perf_counter() - started, 4)
            )
    failing = [name for name, c in checks.items() if not c.ok]
    body = models.Readiness(status="unavailable" if failing else "ready", checks=checks, failing=failing)
    if failing:
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Retry-After": "1"})
    return body


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(request: Request):
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
