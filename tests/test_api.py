"""Tests of the online feature API against the real PostgreSQL (FastAPI's test client).

Data: 50 generated users pushed through ``streamflow.feature_store.push`` (the consumer's way
in): month_000 for every table, then month_001 of usage_agg_30d only (so views have different
event times), one user with users data only, and one user pushed two minutes ago.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api import models
from api.app import create_app
from api.features import MAX_BATCH, FeatureReader
from streamflow import config, schema
from streamflow.batch.validate import read_snapshot
from streamflow.datagen.generate import generate
from streamflow.feature_store import push
from streamflow.net import free_port
from streamflow.push_validation import push_columns
from tests import pipeline

USERS = 50
UNKNOWN = "0000-ZZZZZ"
JAN = schema.as_of_timestamp(schema.snapshot_as_of("month_000"))
FEB = schema.as_of_timestamp(schema.snapshot_as_of("month_001"))
SERVICE_VIEWS = [t.feature_view for t in schema.FEATURE_TABLES]


# --- data ----------------------------------------------------------------------------------------


def push_frame(table: schema.Table, frame: pd.DataFrame, as_of: datetime, snapshot: str) -> pd.DataFrame:
    out = frame.copy()
    out[schema.SNAPSHOT_TIME] = pd.Series([as_of] * len(out), index=out.index, dtype="datetime64[ns, UTC]")
    out[schema.EVENT_SNAPSHOT] = snapshot
    return out[push_columns(table)]


def json_value(value, kind: str):
    """What the API should answer for a value of the snapshot frame."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    if kind == "date":
        return pd.Timestamp(value).date().isoformat()
    if hasattr(value, "item"):
        value = value.item()
    return {"integer": int, "float": float, "boolean": bool, "category": str}[kind](value)


def expected_features(frames: dict[str, pd.DataFrame], user: str) -> dict[str, dict]:
    out = {}
    for table in schema.FEATURE_TABLES:
        row = frames[table.name].set_index(schema.KEY).loc[user]
        out[table.feature_view] = {c.name: json_value(row[c.name], c.kind) for c in table.columns}
    return out


class Data:
    def __init__(self, folder: Path):
        self.jan = read_snapshot(folder / "month_000")
        self.feb = read_snapshot(folder / "month_001")
        ids = self.jan["users"][schema.KEY].tolist()
        self.partial = ids[-2]  # only users data online
        self.fresh = ids[-1]  # every table pushed two minutes ago (month_001 values)
        self.users = ids[:-2]
        self.fresh_as_of = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=2)

    def expected(self, user: str) -> dict[str, dict]:
        """Online values: month_001 for usage_agg_30d and for the fresh user, month_000 otherwise."""
        jan, feb = expected_features(self.jan, user), expected_features(self.feb, user)
        if user == self.fresh:
            return feb
        return {**jan, "usage_agg_30d_fv": feb["usage_agg_30d_fv"]}

    def event_time(self, user: str, view: str) -> datetime:
        if user == self.fresh:
            return self.fresh_as_of
        return FEB if view == "usage_agg_30d_fv" else JAN


@pytest.fixture(scope="module")
def data(pg_settings, tmp_path_factory) -> Data:
    folder = tmp_path_factory.mktemp("api-data")
    generate(folder, users=USERS, seed=11, progress=False)
    pipeline.reset_store()
    d = Data(folder)
    for table in schema.FEATURE_TABLES:
        jan = d.jan[table.name]
        others = jan[jan[schema.KEY].isin(d.users)]
        push(table, push_frame(table, jan if table.name == "users" else others, JAN, "month_000"))
    usage = schema.table("usage_agg_30d")
    feb = d.feb[usage.name]
    push(usage, push_frame(usage, feb[feb[schema.KEY].isin(d.users)], FEB, "month_001"))
    for table in schema.FEATURE_TABLES:
        feb = d.feb[table.name]
        push(table, push_frame(table, feb[feb[schema.KEY] == d.fresh], d.fresh_as_of, "live"))
    return d


@pytest.fixture(scope="module")
def client(data):
    with TestClient(create_app()) as c:
        yield c


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = models.ErrorResponse.model_validate(response.json()).model_dump()
    assert body["error"] == code
    assert "Traceback" not in response.text and "password" not in response.text
    return body


# --- GET /features/{user_id} -----------------------------------------------------------------------


def test_get_returns_every_feature_of_the_service_grouped_by_view(client, data):
    user = data.users[0]
    r = client.get(f"/features/{user}")
    assert r.status_code == 200, r.text
    body = models.UserFeatures.model_validate(r.json())
    assert body.user_id == user and body.found
    assert list(body.views) == SERVICE_VIEWS
    for table in schema.FEATURE_TABLES:
        assert list(body.views[table.feature_view].features) == table.feature_names
    assert {v: view.features for v, view in body.views.items()} == data.expected(user)
    assert "churn_labels_fv" not in r.json()["views"]


def test_values_have_json_types_and_dates_are_iso_days(client, data):
    for user in data.users[:10]:
        views = client.get(f"/features/{user}").json()["views"]
        assert isinstance(views["users_profile_fv"]["features"]["user_is_senior"], bool)
        assert isinstance(views["subs_profile_fv"]["features"]["months_active"], int)
        assert isinstance(views["subs_profile_fv"]["features"]["monthly_fee"], float)
        assert datetime.strptime(views["users_profile_fv"]["features"]["signup_date"], "%Y-%m-%d")
        assert views == {k: {**v, "features": data.expected(user)[k]} for k, v in views.items()}


def test_freshness_event_timestamp_is_the_pushed_as_of_and_age_counts_from_it(client, data):
    for user in (data.users[1], data.fresh):
        before = datetime.now(timezone.utc)
        views = client.get(f"/features/{user}").json()["views"]
        after = datetime.now(timezone.utc)
        for name, view in views.items():
            expected = data.event_time(user, name)
            assert datetime.fromisoformat(view["event_timestamp"].replace("Z", "+00:00")) == expected
            assert (
                (before - expected).total_seconds() - 1
                <= view["age_seconds"]
                <= (after - expected).total_seconds() + 1
            )
    fresh = client.get(f"/features/{data.fresh}").json()["views"]["subs_profile_fv"]
    assert 115 <= fresh["age_seconds"] < 600


def test_user_with_some_views_only_is_found_and_the_missing_views_say_so(client, data):
    r = client.get(f"/features/{data.partial}")
    assert r.status_code == 200
    views = r.json()["views"]
    assert views["users_profile_fv"]["found"] is True
    assert views["users_profile_fv"]["features"] == data.expected(data.partial)["users_profile_fv"]
    for name in SERVICE_VIEWS[1:]:
        assert views[name] == {"found": False, "event_timestamp": None, "age_seconds": None, "features": {}}


def test_unknown_user_is_404_json(client, data):
    body = assert_error(client.get(f"/features/{UNKNOWN}"), 404, "not_found")
    assert UNKNOWN in body["detail"]


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "1234-abcde",
        "12345-ABCDE",
        "1234-ABCD",
        "1234_ABCDE",
        "%20" * 3,
        "1234-ABCDE%0A",
        "'; DROP TABLE users;--",
    ],
)
def test_malformed_user_id_is_422(client, bad):
    body = assert_error(client.get(f"/features/{bad}"), 422, "invalid_request")
    assert "user id" in body["detail"]


def test_feature_selection_returns_only_the_chosen_features(client, data):
    user = data.users[2]
    r = client.get(
        f"/features/{user}",
        params={
            "features": "usage_agg_30d_fv:skips_7d,subs_profile_fv:contract_type,subs_profile_fv:monthly_fee"
        },
    )
    assert r.status_code == 200, r.text
    views = r.json()["views"]
    assert list(views) == ["subs_profile_fv", "usage_agg_30d_fv"]  # the service's order
    expected = data.expected(user)
    assert views["subs_profile_fv"]["features"] == {
        "contract_type": expected["subs_profile_fv"]["contract_type"],
        "monthly_fee": expected["subs_profile_fv"]["monthly_fee"],
    }
    assert views["usage_agg_30d_fv"]["features"] == {"skips_7d": expected["usage_agg_30d_fv"]["skips_7d"]}
    assert views["usage_agg_30d_fv"]["event_timestamp"] == "2024-02-29T00:00:00Z"


def test_selection_of_views_the_user_lacks_is_404(client, data):
    assert_error(
        client.get(f"/features/{data.partial}", params={"features": "subs_profile_fv:contract_type"}),
        404,
        "not_found",
    )


@pytest.mark.parametrize(
    "selection, named",
    [
        ("subs_profile_fv:no_such_feature", "subs_profile_fv:no_such_feature"),
        ("no_such_fv:contract_type", "no_such_fv:contract_type"),
        ("contract_type", "contract_type"),
        ("churn_labels_fv:churn_label", "churn_labels_fv:churn_label"),  # not in the feature service
        ("subs_profile_fv:contract_type,subs_profile_fv:typo", "subs_profile_fv:typo"),
        ("", "''"),
    ],
)
def test_unknown_feature_is_400_naming_it(client, data, selection, named):
    body = assert_error(
        client.get(f"/features/{data.users[0]}", params={"features": selection}), 400, "unknown_feature"
    )
    assert named in body["detail"]
    assert "subs_profile_fv:contract_type" in body["detail"]  # and lists the known ones


# --- the fast path and FastAPI's route give the same answers -------------------------------------


@pytest.fixture(scope="module")
def reference_client(data):
    """FastAPI's route for every request (the fast path off): the reference."""
    with TestClient(create_app(fast_path=False, lag=False)) as c:
        yield c


def parity_requests(data) -> list[tuple[str, bool]]:
    """(path and query, whether the fast path answers it)."""
    u = data.users[0]
    fast = [
        f"/features/{u}",
        f"/features/{data.partial}",
        f"/features/{data.fresh}",
        f"/features/{UNKNOWN}",
        f"/features/{u}?features=users_profile_fv:user_gender",
        f"/features/{u}?features=users_profile_fv%3Auser_gender%2Cusage_agg_30d_fv%3Awatch_hours_30d",
        f"/features/{data.partial}?features=usage_agg_30d_fv:watch_hours_30d",
        f"/features/{u}?features=",
        f"/features/{u}?features=nope",
        f"/features/{u}?features=users_profile_fv:user_gender,users_profile_fv:nope",
        f"/features/{u}?features=caf%C3%A9",
    ]
    fastapi_only = [
        f"/features/{u}?features=a&features=users_profile_fv:user_gender",
        f"/features/{u}?other=1",
        f"/features/{u}?features=users_profile_fv:user_gender&x=1",
        f"/features/{u}/",
        "/features/",
        "/features/1234-abcde",
        "/features/1234-ABCDE%0A",
        "/features/1234-ABCDEF",
        f"/features/{u}?features=%FF",
    ]
    return [(p, True) for p in fast] + [(p, False) for p in fastapi_only]


def comparable(response) -> tuple:
    if response.status_code == 307:  # (FastAPI's redirect of a trailing slash)
        return 307, response.headers["location"]
    body = response.json()
    if isinstance(body, dict) and "views" in body:
        body = {**body, "views": without_age(body["views"])}
    headers = response.headers
    return response.status_code, headers.get("content-type"), headers.get("retry-after"), body


def fast_path_answers(monkeypatch, method: str) -> list[str]:
    """The user ids that ``FeatureFastPath.<method>`` answers from now on (the method still runs)."""
    from api.fast_path import FeatureFastPath

    answered: list[str] = []
    original = getattr(FeatureFastPath, method)

    async def counting(self, user_id, *args):
        answered.append(user_id)
        await original(self, user_id, *args)

    monkeypatch.setattr(FeatureFastPath, method, counting)
    return answered


def assert_same_answers(ours, reference, requests: list[tuple[str, bool]], answered: list[str]) -> None:
    """Each GET ``(path, on_fast_path)`` gets the same answer from both apps, the fast path took it
    exactly when said, and its length is the one announced."""
    for path, on_fast_path in requests:
        before = len(answered)
        a = ours.get(path, follow_redirects=False)
        b = reference.get(path, follow_redirects=False)
        assert comparable(a) == comparable(b), path
        assert (len(answered) > before) == on_fast_path, path
        assert int(a.headers["content-length"]) == len(a.content)


def test_fast_path_answers_like_fastapis_route(client, reference_client, data, monkeypatch):
    answered = fast_path_answers(monkeypatch, "_answer")
    assert_same_answers(client, reference_client, parity_requests(data), answered)
    assert len(answered) == sum(fast for _, fast in parity_requests(data))


def test_fast_path_503_is_the_same_as_fastapis(data, monkeypatch):
    def unreachable_app(fast_path: bool):
        with monkeypatch.context() as m:
            m.setenv("POSTGRES_PORT", str(closed_port()))
            from streamflow.feature_store import open_store

            store = open_store()  # reads the settings now
        return create_app(FeatureReader(store=store, db_timeout=0.5), fast_path=fast_path, lag=False)

    with TestClient(unreachable_app(True)) as ours, TestClient(unreachable_app(False)) as reference:
        path = f"/features/{data.users[0]}"
        a, b = ours.get(path), reference.get(path)
        assert a.status_code == 503 and comparable(a) == comparable(b)


def test_fast_path_predicts_like_fastapis_route(data, monkeypatch):
    """GET /predict/{user_id}: the fast path and FastAPI's route give the same answers (a scored
    user, one with none of the model's views, an unknown one, no model yet), and the fast path
    takes only a valid id without a query string."""
    answered = fast_path_answers(monkeypatch, "_predict")
    champion = synthetic_champion()
    fast = [
        f"/predict/{data.users[0]}",
        f"/predict/{data.partial}",
        f"/predict/{UNKNOWN}",
    ]
    fastapi_only = [f"/predict/{data.users[0]}?x=1", "/predict/1234-abcde", f"/predict/{data.users[0]}/"]
    with (
        TestClient(create_app(lag=False, champion=LoadedChampion(champion))) as ours,
        TestClient(create_app(lag=False, fast_path=False, champion=LoadedChampion(champion))) as reference,
    ):
        requests = [(p, True) for p in fast] + [(p, False) for p in fastapi_only]
        assert_same_answers(ours, reference, requests, answered)
        assert [ours.get(p).status_code for p in fast] == [200, 404, 404]
        metrics = ours.get("/metrics").text
        assert 'route="/predict/{user_id}",status="200"' in metrics.replace('method="GET",', "")
    with (
        TestClient(create_app(lag=False)) as ours,
        TestClient(create_app(lag=False, fast_path=False)) as reference,
    ):
        a, b = ours.get(fast[0]), reference.get(fast[0])
        assert a.status_code == 503 and comparable(a) == comparable(b)
    assert len(answered) == 2 * len(fast) + 1  # (the status check asked each again; the 503)


# --- POST /features ------------------------------------------------------------------------------


def test_batch_keeps_request_order_and_marks_unknown_users(client, data):
    ids = [data.users[3], UNKNOWN, data.users[0], data.partial, data.users[3], "9999-QQQQQ", data.fresh]
    r = client.post("/features", json={"user_ids": ids})
    assert r.status_code == 200, r.text
    body = models.BatchFeatures.model_validate(r.json())
    assert [u.user_id for u in body.results] == ids
    assert [u.found for u in body.results] == [True, False, True, True, True, False, True]
    assert body.found == 5 and body.not_found == 2
    for result in body.results:
        if not result.found:
            assert result.views == {}
            continue
        single = client.get(f"/features/{result.user_id}").json()["views"]
        batch = r.json()["results"][ids.index(result.user_id)]["views"]
        assert without_age(batch) == without_age(single)


def without_age(views: dict) -> dict:
    return {name: {k: v for k, v in view.items() if k != "age_seconds"} for name, view in views.items()}


def test_batch_feature_selection(client, data):
    r = client.post(
        "/features",
        json={"user_ids": data.users[:5], "features": ["payments_agg_90d_fv:failed_payments_90d"]},
    )
    assert r.status_code == 200
    for user, result in zip(data.users[:5], r.json()["results"]):
        assert result["views"] == {
            "payments_agg_90d_fv": {
                "found": True,
                "event_timestamp": "2024-01-31T00:00:00Z",
                "age_seconds": result["views"]["payments_agg_90d_fv"]["age_seconds"],
                "features": {
                    "failed_payments_90d": data.expected(user)["payments_agg_90d_fv"]["failed_payments_90d"]
                },
            }
        }
    body = assert_error(
        client.post("/features", json={"user_ids": data.users[:2], "features": ["users_profile_fv:age"]}),
        400,
        "unknown_feature",
    )
    assert "users_profile_fv:age" in body["detail"]


def test_batch_of_the_limit_is_answered_and_over_the_limit_is_422_stating_it(client, data):
    many = [f"{i:04d}-ABCDE" for i in range(MAX_BATCH - 1)] + [data.users[0]]
    r = client.post("/features", json={"user_ids": many})
    assert r.status_code == 200
    assert r.json()["found"] == 1 and len(r.json()["results"]) == MAX_BATCH
    assert r.json()["results"][-1]["user_id"] == data.users[0]
    body = assert_error(
        client.post("/features", json={"user_ids": many + ["1000-ABCDE"]}), 422, "invalid_request"
    )
    assert str(MAX_BATCH) in body["detail"] and "1001" in body["detail"]


@pytest.mark.parametrize(
    "payload",
    [
        {"user_ids": ["bad-id"]},
        {"user_ids": "7590-VHVEG"},
        {},
        {"user_ids": [], "extra": 1},
        {"user_ids": [1234]},
    ],
)
def test_malformed_batch_is_422(client, payload):
    assert_error(client.post("/features", json=payload), 422, "invalid_request")


def test_empty_batch_and_invalid_json(client):
    r = client.post("/features", json={"user_ids": []})
    assert r.status_code == 200 and r.json() == {"results": [], "found": 0, "not_found": 0}
    assert_error(
        client.post("/features", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )


# --- operations ----------------------------------------------------------------------------------


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    body = models.Readiness.model_validate(r.json())
    assert body.status == "ready" and body.failing == []
    assert set(body.checks) == {"postgres", "feast_registry"} and all(c.ok for c in body.checks.values())


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.delete("/health"), 405, "method_not_allowed")


def test_metrics_count_and_time_requests_per_route_template_and_status(client, data):
    def sample(text: str, name: str, **labels) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = client.get("/metrics").text
    for user in data.users[:3]:
        client.get(f"/features/{user}")
    client.get(f"/features/{UNKNOWN}")
    client.get("/features/nope")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/features/{user_id}"
    for status, n in (("200", 3), ("404", 1), ("422", 1)):
        total = "streamflow_api_requests_total"
        assert (
            sample(text, total, route=route, status=status)
            - sample(before, total, route=route, status=status)
            == n
        )
        count = "streamflow_api_request_duration_seconds_count"
        assert (
            sample(text, count, route=route, status=status)
            - sample(before, count, route=route, status=status)
            == n
        )
    assert (
        sample(text, "streamflow_api_request_duration_seconds_bucket", route=route, status="200", le="+Inf")
        >= 3
    )
    assert any(
        line.startswith("streamflow_api_request_duration_seconds_bucket{")
        and 'le="0.01"' in line
        and f'route="{route}"' in line
        for line in text.splitlines()
    )
    assert 'route="/metrics"' in text
    assert f"/features/{UNKNOWN}" not in text  # templates, not raw paths
    assert sample(text, "streamflow_api_users_looked_up_total", result="not_found") >= 1


def test_openapi_schema_documents_the_responses(client):
    spec = client.get("/openapi.json").json()
    get = spec["paths"]["/features/{user_id}"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/UserFeatures")
    for status in ("400", "404", "422", "503"):
        assert get["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
    post = spec["paths"]["/features"]["post"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/BatchFeatures"
    )
    assert spec["components"]["schemas"]["FeaturesRequest"]["properties"]["user_ids"]["maxItems"] == MAX_BATCH
    assert {"/health", "/ready", "/metrics"} <= set(spec["paths"])


def test_unexpected_error_is_500_json_without_internals_and_logged(data, caplog, monkeypatch):
    app = create_app()
    with TestClient(app) as c:

        def boom(*args, **kwargs):
            raise RuntimeError("secret: postgresql://streamflow:streamflow@127.0.0.1:5432/streamflow")

        monkeypatch.setattr(app.state.reader, "lookup", boom)
        with caplog.at_level(logging.ERROR, logger="api"):
            r = c.get(f"/features/{data.users[0]}")
        assert_error(r, 500, "internal_error")
        assert "secret" not in r.text and "postgresql://" not in r.text
        assert any(rec.exc_info and "secret" in str(rec.exc_info[1]) for rec in caplog.records)
        assert 'status="500"' in c.get("/metrics").text


def test_unexpected_error_behind_fastapis_route_is_one_500_logged_once(data, caplog, monkeypatch):
    app = create_app(lag=False)
    with TestClient(app) as c:  # (the test client raises what reaches the server)

        def boom(*args, **kwargs):
            raise RuntimeError("secret: postgresql://streamflow:streamflow@127.0.0.1:5432/streamflow")

        monkeypatch.setattr(app.state.reader, "lookup", boom)
        with caplog.at_level(logging.ERROR):
            r = c.post("/features", json={"user_ids": [data.users[0]]})
        assert_error(r, 500, "internal_error")
        assert "secret" not in r.text
        logged = [rec for rec in caplog.records if rec.exc_info and "secret" in str(rec.exc_info[1])]
        assert len(logged) == 1, [rec.getMessage() for rec in logged]
        metrics = c.get("/metrics").text
        assert 'route="/features",status="500"' in metrics.replace('method="POST",', "")


# --- PostgreSQL unreachable ----------------------------------------------------------------------


def closed_port() -> int:
    return free_port()  # nothing listens there once the helper's socket is closed


def test_unreachable_database_gives_503_naming_the_part_and_no_internals(data, monkeypatch):
    port = closed_port()
    with monkeypatch.context() as m:
        m.setenv("POSTGRES_PORT", str(port))
        from streamflow.feature_store import open_store

        store = open_store()  # reads the settings now
    app = create_app(FeatureReader(store=store, db_timeout=0.5))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503
        body = models.Readiness.model_validate(r.json())
        assert body.status == "unavailable" and set(body.failing) == {"postgres", "feast_registry"}
        assert str(port) not in r.text and "password" not in r.text
        for resp in (
            c.get(f"/features/{data.users[0]}"),
            c.post("/features", json={"user_ids": data.users[:2]}),
        ):
            err = assert_error(resp, 503, "unavailable")
            assert "registry" in err["detail"] or "PostgreSQL" in err["detail"]
            assert str(port) not in resp.text


class TcpProxy:
    """A TCP forwarder to PostgreSQL that can be cut and restored: an outage without stopping it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = closed_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (as a database crash would)."""
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def wait_for(client: TestClient, path: str, status: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(path)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_database_outage_gives_503_and_the_service_recovers_by_itself(data):
    pg = config.postgres()
    proxy = TcpProxy((pg.host, pg.port))
    proxy.start()
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setenv("POSTGRES_PORT", str(proxy.port))
            from streamflow.feature_store import open_store

            store = open_store()  # reads the settings now
        app = create_app(FeatureReader(store=store, db_timeout=1.0))
        user = data.users[4]
        with TestClient(app) as c:
            assert c.get(f"/features/{user}").status_code == 200
            assert c.get("/ready").status_code == 200

            proxy.stop()
            started = time.monotonic()
            assert_error(c.get(f"/features/{user}"), 503, "unavailable")
            assert time.monotonic() - started < 5
            r = c.get("/ready")
            assert r.status_code == 503 and "postgres" in r.json()["failing"]
            assert c.get("/health").status_code == 200

            proxy.start()
            r = wait_for(c, f"/features/{user}", 200)
            assert r.status_code == 200, r.text
            assert r.json()["views"] == client_views(data, user, r.json()["views"])
            assert wait_for(c, "/ready", 200).status_code == 200
    finally:
        proxy.stop()


def client_views(data: Data, user: str, views: dict) -> dict:
    """The views as they should be (ages copied: they move with time)."""
    return {
        name: {
            "found": True,
            "event_timestamp": data.event_time(user, name).isoformat().replace("+00:00", "Z"),
            "age_seconds": views[name]["age_seconds"],
            "features": data.expected(user)[name],
        }
        for name in SERVICE_VIEWS
    }


@pytest.mark.slow
def test_postgres_restart_gives_503_then_the_service_recovers(client, data):
    """The real thing: stop PostgreSQL with the services script, then start it again."""
    script = str(config.REPO_ROOT / "scripts" / "services.sh")
    user = data.users[5]
    assert client.get(f"/features/{user}").status_code == 200
    try:
        subprocess.run([script, "stop-postgres"], check=True, capture_output=True, timeout=120)
        assert_error(client.get(f"/features/{user}"), 503, "unavailable")
        assert client.get("/ready").status_code == 503
    finally:
        subprocess.run([script, "start-postgres"], check=True, capture_output=True, timeout=180)
    r = wait_for(client, f"/features/{user}", 200, timeout=60)
    assert r.status_code == 200, r.text
    assert wait_for(client, "/ready", 200, timeout=60).status_code == 200


# --- fuzzing over the OpenAPI schema -------------------------------------------------------------


class LoadedChampion:
    """What the app needs of a streamflow.churn.scoring.ChampionWatcher, with its model loaded."""

    def __init__(self, champion) -> None:
        self.current, self.problem, self.on_change = champion, None, None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def synthetic_champion():
    """A logistic-regression pipeline fitted on generated feature rows (no MLflow)."""
    import numpy as np

    from streamflow.churn import candidates, features
    from streamflow.churn.registry import ModelVersion
    from streamflow.churn.scoring import Champion

    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        row = {f.name: float(rng.integers(0, 10)) for f in features.MODEL_FEATURES if not f.categorical}
        row.update(plan_stream_tv=bool(i % 2), plan_stream_movies=None, net_service=["DSL", "No"][i % 2])
        rows.append(row)
    model = candidates.logistic_regression().fit(features.model_frame(rows), [i % 2 for i in range(200)])
    return Champion(ModelVersion("synthetic", "1", tuple(features.NAMES)), model)


try:
    import schemathesis
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - schemathesis is in the test extra
    schemathesis = None


if schemathesis is not None:
    # The schema comes from the app object itself (no database needed to collect the tests);
    # the requests go through a test client whose app has started (lifespan) on the test data.
    fuzz_schema = schemathesis.openapi.from_dict(create_app().openapi())

    @pytest.fixture(scope="module")
    def fuzz_client(data):
        """The app with a champion model loaded, so that /predict is fuzzed as it serves."""
        with TestClient(create_app(champion=LoadedChampion(synthetic_champion()))) as c:
            yield c

    @fuzz_schema.parametrize()
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def test_fuzz_openapi_no_server_errors(case, fuzz_client):
        from schemathesis.checks import not_a_server_error
        from schemathesis.specs.openapi.checks import (
            content_type_conformance,
            response_schema_conformance,
            status_code_conformance,
        )

        kwargs = case.as_transport_kwargs(base_url=str(fuzz_client.base_url))
        if not kwargs.get("cookies"):
            kwargs.pop("cookies", None)
        if isinstance(kwargs.get("data"), (bytes, str)):  # raw bodies: httpx calls them content
            kwargs["content"] = kwargs.pop("data")
        response = fuzz_client.request(**kwargs)
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

else:  # pragma: no cover

    @pytest.mark.skip(
        reason="schemathesis is not installed (it is in the test extra: pip install -e '.[test]')"
    )
    def test_fuzz_openapi_no_server_errors():
        pass


def test_lookup_command_prints_what_the_api_answers(client, data, capsys):
    from streamflow.online_features import lookup_main

    user = data.users[0]
    api = client.get(f"/features/{user}").json()["views"]
    assert lookup_main([user, "9999-ZZZZZ", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [ours, unknown] = doc["users"]
    assert ours["found"] and not unknown["found"]
    for view, body in api.items():  # same values, dates as YYYY-MM-DD like the API
        assert ours["features"][view] == body["features"], view
    assert lookup_main([user]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{user}:\n") and "00:00:00" not in text and "+00:00" not in text


def test_a_null_timestamp_value_is_no_value_not_a_500():
    from api.features import decode_value

    null = -(2**63)  # what Feast stores for a missing timestamp
    assert decode_value(("unix_timestamp_val", null), "date") is None
    assert decode_value(("unix_timestamp_val", null), "timestamp") is None
    assert decode_value(("unix_timestamp_val", 1706659200), "date") == "2024-01-31"


def test_a_huge_body_or_feature_list_is_refused_before_any_work_and_the_echo_stays_short(client, data):
    r = client.post("/features", content=b'{"user_ids": ["' + b"x" * (50 * 1024 * 1024) + b'"]}')
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    many = ["a:b"] * 100_000  # 600 KB of JSON: refused by size, not parsed
    r = client.post("/features", json={"user_ids": data.users[:1], "features": many})
    assert r.status_code == 413
    body = assert_error(
        client.post("/features", json={"user_ids": data.users[:1], "features": ["a:b"] * 300}),
        422,
        "invalid_request",
    )
    assert "256" in body["detail"]
    unknown = [f"v:{i}" + "z" * 150 for i in range(200)]
    body = assert_error(
        client.post("/features", json={"user_ids": data.users[:1], "features": unknown}),
        400,
        "unknown_feature",
    )
    assert body["detail"].count("'v:") == 5 and len(body["detail"]) < 2000
    assert client.get(f"/features/{data.users[0]}").status_code == 200  # the API still answers


def test_a_body_refused_by_its_length_closes_the_connection_unread_and_the_switch_interval_is_the_servers(
    data,
):
    """A 50 MB POST is answered 413 from its Content-Length, and the server closes the connection
    instead of reading (and discarding) the 50 MB that follow; while the server app runs, the
    interpreter's switch interval is SWITCH_INTERVAL, and it is restored after."""
    import socket
    import sys
    import threading

    import uvicorn

    from api.app import SWITCH_INTERVAL
    from streamflow.net import free_port

    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL
    port = free_port()
    app = create_app(lag=False, switch_interval=SWITCH_INTERVAL)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        assert sys.getswitchinterval() == SWITCH_INTERVAL
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 52428800\r\n\r\n" + b"x" * 65536
            )
            answer = b""
            while chunk := sock.recv(65536):  # b"": the server closed the connection
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413") and b"connection: close" in head, answer[:300]
        assert b"too_large" in answer
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert sys.getswitchinterval() == before


def test_scores_answered_are_counted_by_decile_and_plotted_on_the_dashboard(data, tmp_path):
    import threading
    import urllib.request

    import uvicorn

    from streamflow.net import free_port
    from tests.test_dashboard import load_page

    port = free_port()
    app = create_app(lag=False, champion=LoadedChampion(synthetic_champion()))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        scored = 0
        for user in data.users[:4]:
            with urllib.request.urlopen(f"{base}/predict/{user}", timeout=10) as answer:
                scored += json.load(answer)["churn_probability"] is not None
        with urllib.request.urlopen(f"{base}/scores", timeout=10) as answer:
            scores = models.ScoreDistribution.model_validate(json.load(answer))
        assert scored > 0 and scores.total == scored == sum(b.count for b in scores.buckets)
        assert [b.high for b in scores.buckets] == [round(0.1 * i, 1) for i in range(1, 11)]
        assert scores.model is not None and (scores.model.name, scores.model.version) == ("synthetic", "1")
        dom = load_page(f"{base}/dashboard", tmp_path).stdout
        assert 'data-ready="1"' in dom
        before, after = dom.split('data-testid="chart-scores"', 1)
        chart = before.rsplit("<canvas", 1)[1] + after.split(">", 1)[0]
        assert f'data-total="{scored}"' in chart, chart
        assert f"model synthetic version 1 · {scored} scores answered" in dom
    finally:
        server.should_exit = True
        thread.join(timeout=30)
