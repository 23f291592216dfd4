"""Bearer-token authentication of the API (api.auth): which routes need which token, the 401
answers, constant-time comparison, and no token in the logs.

The app runs without the lag sampler; the routes behind the check may answer anything but 401
(404 for an unknown user, 503 without data): what is tested is whether the check lets them by.
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from api import auth
from api.app import create_app
from streamflow import config

API = "api-token-0123456789abcdef"
ROTATED = "api-token-rotated-0123456789"
SCRAPER = "metrics-token-0123456789abc"
USER = "/features/0000-ZZZZZ"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(lag=False, tokens=(API, ROTATED), metrics_tokens=(SCRAPER,))) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code and response.json()["detail"]
    assert response.headers["www-authenticate"].startswith('Bearer realm="streamflow"')


@pytest.mark.parametrize("path", [USER, f"{USER}?features=x", "/ready", "/lag", "/openapi.json", "/docs"])
def test_routes_refuse_a_missing_or_wrong_token(client, path):
    assert_401(client.get(path), "missing_token")
    assert_401(client.get(path, headers=bearer("wrong-token-0123456789abcd")), "invalid_token")
    assert_401(client.get(path, headers=bearer(SCRAPER)), "invalid_token")  # the scraper's is not the API's
    assert_401(client.get(path, headers={"Authorization": f"Basic {API}"}), "missing_token")
    assert_401(client.get(path, headers=bearer(API[:-1])), "invalid_token")


def test_post_features_needs_the_token_too(client):
    assert_401(client.post("/features", json={"user_ids": ["0000-ZZZZZ"]}), "missing_token")
    answered = client.post("/features", json={"user_ids": ["0000-ZZZZZ"]}, headers=bearer(API))
    assert answered.status_code != 401


@pytest.mark.parametrize("token", [API, ROTATED])
def test_every_configured_token_is_accepted(client, token):
    assert client.get("/openapi.json", headers=bearer(token)).status_code == 200
    assert client.get(USER, headers=bearer(token)).status_code in (404, 503)  # past the check
    assert client.get(USER, headers={"authorization": f"bearer  {token} "}).status_code in (404, 503)


def test_health_and_the_dashboard_page_are_open(client):
    assert client.get("/health").status_code == 200
    page = client.get("/dashboard")
    assert page.status_code == 200 and "#token=" in page.text  # the page tells how to pass one


def test_metrics_take_their_own_token_only(client):
    assert_401(client.get("/metrics"), "missing_token")
    assert_401(client.get("/metrics", headers=bearer(API)), "invalid_token")
    r = client.get("/metrics", headers=bearer(SCRAPER))
    assert r.status_code == 200 and 'status="401"' in r.text  # refusals are counted, by route


def test_without_a_metrics_token_metrics_follow_the_api_token():
    with TestClient(create_app(lag=False, tokens=(API,), metrics_tokens=())) as c:
        assert_401(c.get("/metrics"), "missing_token")
        assert c.get("/metrics", headers=bearer(API)).status_code == 200


def test_no_token_configured_means_no_check():
    with TestClient(create_app(lag=False, tokens=(), metrics_tokens=())) as c:
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_tokens_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("STREAMFLOW_API_TOKEN", f" {API} , {ROTATED} ")
    monkeypatch.setenv("STREAMFLOW_METRICS_TOKEN", SCRAPER)
    with TestClient(create_app(lag=False)) as c:  # (the settings are read again: the variables changed)
        assert_401(c.get("/openapi.json"), "missing_token")
        assert c.get("/openapi.json", headers=bearer(ROTATED)).status_code == 200
        assert c.get("/metrics", headers=bearer(SCRAPER)).status_code == 200


@pytest.mark.parametrize("bad", ["short", "has space in it 0123456789", "comma-is-fine-but,tooShort"])
def test_weak_or_malformed_tokens_are_a_config_error_that_does_not_echo_them(monkeypatch, bad):
    monkeypatch.setenv("STREAMFLOW_API_TOKEN", bad)
    with pytest.raises(config.ConfigError) as caught:
        config.settings()
    assert "STREAMFLOW_API_TOKEN" in str(caught.value)
    for part in bad.split(","):
        assert part not in str(caught.value)


def test_every_token_is_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    tokens = (b"first-token-0123456789", b"second-token-0123456789", b"third-token-0123456789")
    assert auth.accepted(b"first-token-0123456789", tokens)
    assert calls == [(b"first-token-0123456789", t) for t in tokens]  # no early exit on a match
    assert not auth.accepted(b"nope", tokens)


def test_the_token_never_reaches_the_logs(caplog):
    with caplog.at_level(logging.DEBUG):
        with TestClient(create_app(lag=False, tokens=(API,), metrics_tokens=())) as c:
            c.get(USER, headers=bearer(API))
            c.get(USER, headers=bearer(API + "x"))
            c.get("/metrics", headers=bearer(API))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records and API not in text
