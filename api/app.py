"""The online feature API: FastAPI application factory.

    GET  /features/{user_id}   every feature of the churn feature service, by view, with freshness
    POST /features             the same for up to 1,000 users, in request order
    GET  /scores               the churn probabilities answered so far, by decile (the dashboard's chart)
    GET  /predict/{user_id}    the user's churn probability from the champion model (MLflow), the
                               model's name and version, and the features it read with their age
    POST /predict              the same for up to 1,000 users, in request order
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

With STREAMFLOW_API_TOKEN set, every route but /health and the dashboard page requires
``Authorization: Bearer <token>`` (api.auth; /metrics may have STREAMFLOW_METRICS_TOKEN of its own).

The routes live in api.feature_routes, api.health_routes and api.lag_routes, the error answers
in api.errors; this module wires them, the metrics and the background parts (lifespan).
Middleware, outermost first: metrics (every answer counted, 401s too), bearer authentication,
the fast path of `GET /features/{user_id}` (api.fast_path), then FastAPI's own stack (its error,
telemetry and body-limit middlewares and router; StreamflowAPI).
Feature lookups go through one :class:`api.batcher.LookupBatcher` per process: the users of
concurrent requests are read together, on threads of its own, so blocking psycopg calls never
run on the event loop and a slow database never stalls /health or /metrics; /ready's checks
are plain ``def`` endpoints (FastAPI's thread pool). Feature answers are serialized once with orjson;
the response models in api.models document them (OpenAPI) and the tests hold them to it.
Errors are JSON (:class:`api.models.ErrorResponse`); an unexpected exception is logged with
its traceback and answered with a 500 that says nothing about internals.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from starlette.types import ASGIApp

from api import feature_routes, health_routes, lag_routes, predict_routes
from api.auth import BearerAuth
from api.batcher import LookupBatcher
from api.drift_gauges import DriftGauges
from api.errors import add_exception_handlers, error
from api.fast_path import FeatureFastPath
from api.features import FeatureReader
from api.limits import BodyLimit
from streamflow import config, schema
from streamflow.dead_letters.tally import DeadLetterTally
from streamflow.lag.metrics import register_lag_metrics
from streamflow.lag.sampler import LagSampler
from streamflow.topics import dead_letter_topic

log = logging.getLogger("api")

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holds the interpreter lock before another one waiting gets it, while the server
runs (Python's default is 0.005). A large request's read and rendering run on a lookup thread
holding the lock; a small request needs it several times on its way (event loop, lookup thread,
event loop), and with the default it waits up to 5 ms each time."""

SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
"""Deciles of the churn probability."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The API's Prometheus metrics, on their own registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "streamflow_api_requests",
            "HTTP requests answered, by route template and status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "streamflow_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple] = {}
        self.users = Counter(
            "streamflow_api_users_looked_up",
            "Users looked up, by whether the online store had them",
            ("result",),
            registry=self.registry,
        )

        self.scores = Histogram(
            "streamflow_churn_score",
            "Churn probabilities answered by /predict",
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.model = Info(
            "streamflow_model", "The churn model that serves /predict (name, version)", registry=self.registry
        )

    def score_distribution(self) -> tuple[int, list[dict]]:
        """Scores answered so far: their number and the count of each decile bucket."""
        cumulative = {
            float(sample.labels["le"]): int(sample.value)
            for metric in self.scores.collect()
            for sample in metric.samples
            if sample.name.endswith("_bucket")
        }
        buckets, below, low = [], 0, 0.0
        for high in SCORE_BUCKETS:
            count = cumulative.get(high, below)
            buckets.append({"low": low, "high": high, "count": count - below})
            below, low = count, high
        return cumulative.get(float("inf"), below), buckets

    def set_model(self, champion) -> None:
        """Record the model now serving (a streamflow.churn.scoring.Champion)."""
        self.model.info({"name": champion.version.name, "version": champion.version.version})

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # (labels() looks the child up under a lock: once per key, not per request)
            labels = (method, route, str(status))
            children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

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
        answered = False

        async def send_status(message):
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            if answered:
                # FastAPI's error middleware answered 500 (api.errors.internal_error logged the
                # traceback) and raised again for the server: the client has its answer.
                return
            log.exception("unhandled error on %s %s", scope["method"], scope.get("path", "?"))
            if status:
                raise  # the answer has started: nothing sensible can be sent any more
            # An exception no handler turned into an answer: answer a bare 500.
            await error(500, "internal_error", "internal server error")(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.metrics.observe(scope["method"], route, status or 500, time.perf_counter() - started)


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


def _lifespan(
    reader: FeatureReader,
    batcher: LookupBatcher,
    sampler: LagSampler | None,
    tally: DeadLetterTally | None,
    freeze_gc: bool,
    background: list,
    switch_interval: float | None,
):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        previous_interval = sys.getswitchinterval()
        if switch_interval is not None:
            sys.setswitchinterval(switch_interval)
        await run_in_threadpool(reader.start)
        batcher.start()
        for part in background:  # the model watcher loads the model: /predict answers 503 until then
            part.start()
        if sampler is not None:
            sampler.start()
        if tally is not None:
            tally.start()
        if freeze_gc:
            gc.freeze()  # no collection first: it would take ~0.13 s of the start to free ~2,000 objects
        gc.enable()  # off while the server started (api.cli)
        log.info("online feature API ready to serve (feature service %s)", schema.FEATURE_SERVICE)
        try:
            yield
        finally:
            if sampler is not None:
                await run_in_threadpool(sampler.stop)
            if tally is not None:
                await run_in_threadpool(tally.stop)
            for part in background:
                await run_in_threadpool(part.stop)
            await run_in_threadpool(batcher.stop)
            await run_in_threadpool(reader.stop)
            sys.setswitchinterval(previous_interval)

    return lifespan


class StreamflowAPI(FastAPI):
    """FastAPI with our own layers outermost (``outer_layers``, set by :func:`create_app`).

    FastAPI puts its error, telemetry and body-limit middlewares around every user middleware;
    per request they cost about an eighth of the fast path's time (the telemetry layer reads
    the environment on each request). Ours wrap FastAPI's whole stack instead, so the fast
    path skips them; every other request still passes through all of them.
    """

    outer_layers: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return self.outer_layers(inner) if self.outer_layers is not None else inner


def create_app(
    reader: FeatureReader | None = None,
    *,
    store=None,
    freeze_gc: bool = False,
    switch_interval: float | None = None,
    lag: bool = True,
    fast_path: bool = True,
    tokens: tuple[str, ...] | None = None,
    metrics_tokens: tuple[str, ...] | None = None,
    champion=None,
    drift: bool = False,
) -> FastAPI:
    """The API application. ``reader`` or ``store`` replace the configured Feast store (tests).

    ``fast_path``: answer the common `GET /features/{user_id}` in plain ASGI (api.fast_path);
    off, FastAPI's route answers every request (the reference the tests compare it with).
    ``tokens``, ``metrics_tokens``: the bearer tokens api.auth requires (default: the settings
    STREAMFLOW_API_TOKEN and STREAMFLOW_METRICS_TOKEN; empty, none).
    ``champion``: the streamflow.churn.scoring.ChampionWatcher whose model answers /predict (started
    and stopped with the app); None: /predict answers 503. ``drift``: the gauges of the last
    ``streamflow drift`` report (api.drift_gauges).

    ``freeze_gc`` (the server does it): once started, move every object the start created to the
    garbage collector's permanent generation (the little garbage among them included), so that no
    full collection scans them while requests are served.
    ``switch_interval`` (the server gives ``SWITCH_INTERVAL``): the interpreter's thread switch
    interval (``sys.setswitchinterval``) while the app runs, restored when it stops.
    """
    reader = reader or FeatureReader(store=store)
    metrics = Metrics()
    background = _background(metrics, champion, drift)
    batcher = LookupBatcher(reader)
    sampler = lag_sampler_from_env(metrics.registry) if lag else None
    tally = DeadLetterTally(dead_letter_topic(), interval=max(5.0, sampler.interval)) if sampler else None
    app = StreamflowAPI(
        title="StreamFlow online features",
        version="0.1.0",
        summary=f"Real-time features of the churn model (Feast feature service {schema.FEATURE_SERVICE}).",
        lifespan=_lifespan(reader, batcher, sampler, tally, freeze_gc, background, switch_interval),
    )
    for name, value in dict(
        reader=reader,
        batcher=batcher,
        metrics=metrics,
        lag_sampler=sampler,
        dead_letters=tally,
        champion=champion,
    ).items():
        setattr(app.state, name, value)
    for routes in (lag_routes, feature_routes, predict_routes, health_routes):
        app.include_router(routes.router)
    app.outer_layers = _outer_layers(app, metrics, fast_path, tokens, metrics_tokens)
    add_exception_handlers(app)
    return app


def _background(metrics: Metrics, champion, drift: bool) -> list:
    """The threads the app starts and stops with it: the champion's watcher (its model version
    shown in the metrics), the drift gauges' refresh."""
    background: list = []
    if champion is not None:
        champion.on_change = metrics.set_model
        background.append(champion)
    if drift:
        background.append(DriftGauges(metrics.registry, config.settings().model.refresh))
    return background


def _outer_layers(app: FastAPI, metrics: Metrics, fast_path: bool, tokens, metrics_tokens):
    """The layers around FastAPI, outermost first: metrics (every answer counted, 401s too),
    authentication (the tokens given, else the settings'), the body limit, the fast path."""
    env = config.settings().api
    api_tokens = env.tokens() if tokens is None else tokens
    scrape_tokens = env.metrics_tokens() if metrics_tokens is None else metrics_tokens

    def outer_layers(inner):
        layer = FeatureFastPath(inner, state=app.state) if fast_path else inner
        layer = BodyLimit(layer)
        layer = BearerAuth(layer, tokens=api_tokens, metrics_tokens=scrape_tokens)
        return MetricsMiddleware(layer, metrics=metrics)

    return outer_layers


def create_server_app() -> FastAPI:
    """The app as `streamflow api` serves it (uvicorn factory)."""
    from streamflow.churn.scoring import ChampionWatcher

    return create_app(
        freeze_gc=True,
        switch_interval=SWITCH_INTERVAL,
        champion=ChampionWatcher(config.settings().model.refresh),
        drift=True,
    )
