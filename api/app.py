"""The online feature API: FastAPI application factory.

    GET  /features/{user_id}   every feature of the churn feature service, by view, with freshness
    POST /features             the same for up to 1,000 users, in request order
    GET  /health               liveness (the process answers)
    GET  /ready                PostgreSQL and the Feast registry answer (503 naming the failing part)
    GET  /metrics              Prometheus: requests and latency per route template and status,
                               consumer lag per partition (messages, seconds, status) and
                               streamflow_kafka_up (0 while the lag sampler cannot reach Kafka,
                               when the lag series are left out rather than shown stale)
    GET  /lag                  consumer lag per partition and totals, with a Burrow-style status
                               (503 "Kafka unreachable ..." while the newest sample attempt failed)
    GET  /lag/history          recent lag and freshness per topic (for the dashboard)
    GET  /dashboard            a page that plots lag and freshness, refreshing by itself

Endpoints are plain ``def`` functions (FastAPI runs them on its thread pool): the reads are
blocking psycopg calls through our Feast online store class, and a slow database must not
stall the event loop (/health, /metrics). Feature answers are serialized once with orjson;
the response models in api.models document them (OpenAPI) and the tests hold them to it.
Errors are JSON (:class:`api.models.ErrorResponse`); an unexpected exception is logged with
its traceback and answered with a 500 that says nothing about internals.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Optional

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import lag_routes, models
from api.features import (
    MAX_BATCH,
    FeatureReader,
    FeaturesUnavailable,
    UnknownFeatures,
    UserResult,
    iso_utc,
    parse_selection,
)
from streamflow import config, schema
from streamflow.lag.metrics import register_lag_metrics
from streamflow.dead_letters.tally import DeadLetterTally
from streamflow.kafka_topics import dead_letter_topic
from streamflow.lag.sampler import LagSampler

log = logging.getLogger("api")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

ERRORS = {
    400: {"model": models.ErrorResponse, "description": "Unknown feature name in the selection"},
    404: {"model": models.ErrorResponse, "description": "The user has no features in the online store"},
    422: {"model": models.ErrorResponse, "description": "Malformed request (user id, body, limit)"},
    503: {"model": models.ErrorResponse, "description": "PostgreSQL or the Feast registry is not reachable"},
}


SELECTION = Query(
    description="Comma-separated view:feature names to return (default: every feature of the service), "
    "e.g. subs_profile_fv:contract_type,usage_agg_30d_fv:watch_hours_30d",
)
USER_ID = Path(pattern=schema.USER_ID_PATTERN.pattern, description="A user id, e.g. 7590-VHVEG")


class Metrics:
    """The API's Prometheus metrics, on their own registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "streamflow_api_requests", "HTTP requests answered, by route template and status",
            labels, registry=self.registry,
        )
        self.latency = Histogram(
            "streamflow_api_request_duration_seconds", "Time to answer an HTTP request, by route template and status",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.users = Counter(
            "streamflow_api_users_looked_up", "Users looked up, by whether the online store had them",
            ("result",), registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            # An exception no handler turned into an answer: log it here, answer a bare 500.
            log.exception("unhandled error on %s %s", scope["method"], scope.get("path", "?"))
            if status:
                raise  # the answer has started: nothing sensible can be sent any more
            await _error(500, "internal_error", "internal server error")(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.metrics.observe(scope["method"], route, status or 500, time.perf_counter() - started)


def _error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors()[:10]:
        loc = [str(p) for p in err.get("loc", ())]
        where = " ".join(loc[:1]) + (" " + ".".join(loc[1:]) if len(loc) > 1 else "")
        if err.get("type") == "too_long" and loc[-1:] == ["user_ids"]:
            got = err.get("input")
            msg = f"at most {MAX_BATCH} user ids per request" + (
                f" (got {len(got)})" if isinstance(got, (list, tuple)) else "")
        elif err.get("type") == "string_pattern_mismatch" and any(p.startswith("user_id") for p in loc):
            value = str(err.get("input", ""))
            shown = value if len(value) <= 40 else value[:40] + "..."
            msg = f"not a user id: {shown!r} (expected 4 digits, a dash and 5 capital letters, like 7590-VHVEG)"
        else:
            msg = err.get("msg", "invalid")
        problems.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


class JSONBytes(Response):
    """A JSON answer serialized once with orjson (the response models document its shape).

    Returning it from an endpoint skips FastAPI's re-validation through the response model,
    which cost more than the database read; tests check the bodies against the models.
    """

    media_type = "application/json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


def _user(result: UserResult) -> dict:
    """The JSON shape of models.UserFeatures."""
    return {
        "user_id": result.user_id,
        "found": result.found,
        "views": {
            name: {
                "found": v.found,
                "event_timestamp": iso_utc(v.event_timestamp) if v.event_timestamp else None,
                "age_seconds": v.age_seconds,
                "features": v.features,
            }
            for name, v in result.views.items()
        },
    }


def lag_sampler_from_env(metrics_registry: CollectorRegistry) -> LagSampler:
    """The lag sampler of the consumer group the API watches (STREAMFLOW_CONSUMER_GROUP), every
    STREAMFLOW_LAG_INTERVAL seconds (default 5); while Kafka is away it backs off up to
    STREAMFLOW_LAG_MAX_BACKOFF seconds (default 30); STREAMFLOW_LAG_TIMEOUT bounds connecting and
    each Kafka request of a sample (default 10)."""
    env = config.settings()
    return LagSampler(
        group=env.consumer.group,
        interval=env.lag.interval,
        metrics=register_lag_metrics(metrics_registry),
        timeout=env.lag.timeout,
        max_backoff=env.lag.max_backoff,
    )


def create_app(reader: FeatureReader | None = None, *, store=None, freeze_gc: bool = False,
               lag: bool = True) -> FastAPI:
    """The API application. ``reader`` or ``store`` replace the configured Feast store (tests).

    ``freeze_gc`` (the server does it): once started, move every object alive to the garbage
    collector's permanent generation. Feast, pandas and pyarrow leave ~170,000 objects behind;
    a full collection over them took 80-190 ms here, a pause that would land in the latency tail.
    """
    reader = reader or FeatureReader(store=store)
    metrics = Metrics()
    sampler = lag_sampler_from_env(metrics.registry) if lag else None
    tally = DeadLetterTally(dead_letter_topic(), interval=max(5.0, sampler.interval)) if sampler else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(reader.start)
        if sampler is not None:
            sampler.start()
        if tally is not None:
            tally.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("online feature API ready to serve (feature service %s)", schema.FEATURE_SERVICE)
        try:
            yield
        finally:
            if sampler is not None:
                await run_in_threadpool(sampler.stop)
            if tally is not None:
                await run_in_threadpool(tally.stop)
            await run_in_threadpool(reader.stop)

    app = FastAPI(
        title="StreamFlow online features",
        version="0.1.0",
        summary=f"Real-time features of the churn model (Feast feature service {schema.FEATURE_SERVICE}).",
        lifespan=lifespan,
    )
    app.state.reader = reader
    app.state.metrics = metrics
    app.state.lag_sampler = sampler
    app.state.dead_letters = tally
    app.include_router(lag_routes.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # -- errors: JSON, never internals ----------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return _error(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownFeatures)
    async def unknown_features(request: Request, exc: UnknownFeatures):
        return _error(400, "unknown_feature", str(exc))

    @app.exception_handler(FeaturesUnavailable)
    async def unavailable(request: Request, exc: FeaturesUnavailable):
        return _error(503, "unavailable", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Only reached for errors outside MetricsMiddleware (which answers the others itself).
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal server error")

    # -- features ------------------------------------------------------------------------------

    @app.get(
        "/features/{user_id}",
        response_model=models.UserFeatures,
        responses={k: ERRORS[k] for k in (400, 404, 422, 503)},
        summary="Online features of one user",
        tags=["features"],
    )
    def get_features(
        user_id: Annotated[str, USER_ID],
        features: Annotated[Optional[str], SELECTION] = None,
    ):
        [result] = reader.lookup([user_id], parse_selection(features))
        metrics.users.labels("found" if result.found else "not_found").inc()
        if not result.found:
            what = "none of the requested features" if features is not None else "no features"
            return _error(404, "not_found", f"user {user_id} has {what} in the online store")
        return JSONBytes(_user(result))

    @app.post(
        "/features",
        response_model=models.BatchFeatures,
        responses={k: ERRORS[k] for k in (400, 422, 503)},
        summary=f"Online features of up to {MAX_BATCH} users",
        tags=["features"],
    )
    def post_features(body: models.FeaturesRequest):
        results = reader.lookup(body.user_ids, body.features)
        found = sum(r.found for r in results)
        metrics.users.labels("found").inc(found)
        metrics.users.labels("not_found").inc(len(results) - found)
        return JSONBytes({"results": [_user(r) for r in results], "found": found, "not_found": len(results) - found})

    # -- operations -----------------------------------------------------------------------------

    @app.get("/health", response_model=models.Health, tags=["operations"], summary="Liveness")
    async def health():
        return models.Health()

    @app.get(
        "/ready",
        response_model=models.Readiness,
        responses={503: {"model": models.Readiness, "description": "A dependency is not reachable"}},
        tags=["operations"],
        summary="Readiness: PostgreSQL and the Feast registry answer",
    )
    def ready():
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

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        tags=["operations"],
        summary="Prometheus metrics",
    )
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_server_app() -> FastAPI:
    """The app as `streamflow api` serves it (uvicorn factory)."""
    return create_app(freeze_gc=True)
