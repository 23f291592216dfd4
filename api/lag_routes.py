"""Lag endpoints of the API: `GET /lag`, `GET /lag/history` and the dashboard page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from api import models

router = APIRouter(tags=["lag"])

UNAVAILABLE = {503: {"model": models.ErrorResponse, "description": "Kafka is not reachable or lag monitoring is off"}}


def _sampler(request: Request):
    sampler = getattr(request.app.state, "lag_sampler", None)
    if sampler is None:
        raise HTTPException(status_code=503, detail="lag monitoring is not running")
    return sampler


@router.get("/lag", summary="Consumer lag per partition, in messages and seconds, with a status",
            responses=UNAVAILABLE)
def get_lag(request: Request) -> dict:
    sampler = _sampler(request)
    snap = sampler.snapshot()
    if snap["sample"] is None:
        if snap["error"]:
            raise HTTPException(status_code=503, detail=f"lag not available: {snap['error']}")
        sampler.sample_once()
        snap = sampler.snapshot()
        if snap["sample"] is None:
            raise HTTPException(status_code=503, detail=f"lag not available: {snap['error'] or 'no sample yet'}")
    return snap


@router.get("/lag/history", summary="Recent lag and freshness per topic, for the dashboard", responses=UNAVAILABLE)
def get_lag_history(request: Request) -> dict:
    return _sampler(request).history_dict()


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    page = resources.files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
