"""Operations endpoints of the API: `GET /lag`, `GET /lag/history`, `GET /dead-letters/summary` and
the dashboard page."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from api import models

router = APIRouter(tags=["lag"])

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": models.ErrorResponse,
        "description": "Kafka is not reachable (the newest lag sample failed) or lag monitoring is off",
    },
}


def _sampler(request: Request):
    sampler = getattr(request.app.state, "lag_sampler", None)
    if sampler is None:
        raise HTTPException(status_code=503, detail="lag monitoring is not running")
    return sampler


def _unavailable(detail: str, retry_after: float) -> JSONResponse:
    # The body of models.ErrorResponse; detail starts with "Kafka unreachable at ..." when it is.
    return JSONResponse(
        {
            "error": "kafka_unreachable" if detail.startswith("Kafka unreachable") else "unavailable",
            "detail": detail,
        },
        status_code=503,
        headers={"Retry-After": str(max(1, round(retry_after)))},
    )


@router.get(
    "/lag",
    summary="Consumer lag per partition, in messages and seconds, with a status",
    response_model=dict,
    responses=UNAVAILABLE,
)
def get_lag(request: Request):
    """The newest sample, while the newest sample attempt succeeded; 503 with its error when it
    failed (the last good figures are not served as current)."""
    sampler = _sampler(request)
    snap = sampler.snapshot()
    if snap["sample"] is None and snap["error"] is None:
        # Before the sampler thread's first sample: wait for it (the thread is the monitor's one
        # user; a request never samples).
        sampler.wait_first(sampler.timeout + 5)
        snap = sampler.snapshot()
    if snap["error"]:
        return _unavailable(snap["error"], sampler.interval)
    if snap["sample"] is None:
        return _unavailable("lag not available: no sample yet", sampler.interval)
    return snap


@router.get(
    "/lag/history", summary="Recent lag and freshness per topic, for the dashboard", responses=UNAVAILABLE
)
def get_lag_history(request: Request) -> dict:
    return _sampler(request).history_dict()


@router.get(
    "/dead-letters/summary",
    summary="Dead letters counted by reason and by source topic",
    responses=UNAVAILABLE,
)
def get_dead_letter_summary(request: Request) -> dict:
    """Counts of the dead-letter topic, refreshed in the background every few seconds (``error``
    says why the newest refresh failed; the counts are those of the last good one)."""
    tally = getattr(request.app.state, "dead_letters", None)
    if tally is None:
        raise HTTPException(
            status_code=503, detail="dead-letter counting is not running (lag monitoring is off)"
        )
    return tally.snapshot()


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    page = resources.files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
