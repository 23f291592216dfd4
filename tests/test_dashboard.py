"""The lag dashboard, loaded in headless Chromium: charts drawn with data, no console errors."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from types import SimpleNamespace

import orjson
import pytest
from kafka import TopicPartition

from consumer.dead_letter_queue import dead_letter_value
from streamflow import kafka_clients
from streamflow.feature_store import apply
from streamflow.kafka_topics import ensure_topics
from streamflow.net import free_port
from streamflow.topics import dead_letter_topic, table_topics
from tests import pipeline

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


TOKEN = "dashboard-token-0123456789abcdef"
"""The API of these tests requires a bearer token (STREAMFLOW_API_TOKEN), as a deployment would."""


def authorized(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})


wait_http = pipeline.wait_http  # (/health: open without the token)


DEAD_LETTER_REASONS = [
    "not valid JSON: <unexpected end>",
    "not valid JSON: <unexpected end>",
    "field plan: 'x' is not one of a, b",
]


def get_json(url: str):
    with urllib.request.urlopen(authorized(url), timeout=10) as resp:
        return orjson.loads(resp.read())


def history_points(base: str) -> list[dict]:
    return get_json(f"{base}/lag/history")["points"]


def wait_history(base: str, points: int, timeout: float = 60) -> list[dict]:
    """Wait until the API's sampler has taken ``points`` samples (it samples every second here)."""
    deadline = time.monotonic() + timeout
    while len(found := history_points(base)) < points:
        assert time.monotonic() < deadline, f"only {len(found)} lag samples after {timeout} s"
        time.sleep(0.2)
    return found


def commit_and_wait(base: str, group: str, offset: int) -> None:
    """Commit ``offset`` on the events' partition like a consumer that got there, then wait until
    the API has sampled it."""
    with urllib.request.urlopen(authorized(f"{base}/lag"), timeout=10) as resp:
        sample = orjson.loads(resp.read())["sample"]
    p = next(p for t in sample["topics"] for p in t["partitions"] if p["log_end_offset"] == 50)
    tp = TopicPartition(p["topic"], p["partition"])
    pipeline.commit_offsets(group, {tp: offset})
    deadline = time.monotonic() + 60
    while history_points(base)[-1]["topics"][tp.topic]["lag"] != 50 - offset:
        assert time.monotonic() < deadline, "the API did not sample the commit within 60 s"
        time.sleep(0.2)


@pytest.fixture()
def lagging_api(monkeypatch, kafka_bootstrap, pg_settings, tmp_path):
    """An API process watching a group that has pending events and no consumer."""
    prefix = pipeline.fresh_prefix()
    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
    group = f"{prefix}-group"
    ensure_topics(table_topics(), partitions=2)
    producer = kafka_clients.producer("test")
    for i in range(50):
        producer.send(table_topics()[0], key=b"1234-ABCDE", value=orjson.dumps({"i": i}))
    ensure_topics([dead_letter_topic()], partitions=2)
    for offset, reason in enumerate(DEAD_LETTER_REASONS):  # as the consumer writes them
        bad = SimpleNamespace(
            topic=table_topics()[0],
            partition=0,
            offset=offset,
            timestamp=0,
            key=b"1234-ABCDE",
            value=b"{",
            headers=[],
        )
        producer.send(dead_letter_topic(), key=bad.key, value=dead_letter_value(bad, reason, None))
    producer.flush()
    producer.close()
    apply()  # the API connects as its role, which apply creates and grants
    port = free_port()
    proc = pipeline.api_process(
        port,
        log_path=tmp_path / "api.log",
        env={
            "STREAMFLOW_CONSUMER_GROUP": group,
            "STREAMFLOW_LAG_INTERVAL": "1",
            "STREAMFLOW_API_TOKEN": TOKEN,
        },
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        wait_history(f"http://127.0.0.1:{port}", 3)  # a few lag samples for the charts
        yield f"http://127.0.0.1:{port}", group
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        pipeline.delete_topics(prefix)


def test_lag_endpoint_reports_the_pending_events(lagging_api):
    base, group = lagging_api
    with urllib.request.urlopen(authorized(f"{base}/lag"), timeout=10) as resp:
        body = orjson.loads(resp.read())
    assert body["group"] == group
    assert body["sample"]["lag"] == 50
    assert body["sample"]["lag_seconds"] > 0
    with urllib.request.urlopen(authorized(f"{base}/lag/history"), timeout=10) as resp:
        assert len(orjson.loads(resp.read())["points"]) >= 2
    with urllib.request.urlopen(authorized(f"{base}/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    assert f'streamflow_consumer_lag_messages{{group="{group}"' in text
    deadline = time.monotonic() + 60
    while (summary := get_json(f"{base}/dead-letters/summary"))["total"] < 3:
        assert time.monotonic() < deadline, summary
        time.sleep(0.2)
    assert summary["total"] == 3 and summary["error"] is None
    assert summary["by_reason"] == [
        {"reason": "not valid JSON: <unexpected end>", "count": 2},
        {"reason": "field plan: 'x' is not one of a, b", "count": 1},
    ]
    assert summary["by_topic"] == {table_topics()[0]: 3}


def load_page(url: str, tmp_path) -> subprocess.CompletedProcess:
    """The page's DOM after its scripts ran (headless Chromium, 6 s of virtual time)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it with apt-get)", pytrace=False)
    return subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=6000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dashboard_without_the_token_says_how_to_give_it(lagging_api, tmp_path):
    base, _ = lagging_api
    dom = load_page(f"{base}/dashboard", tmp_path).stdout
    assert 'data-auth="refused"' in dom and "needs a token: open /dashboard#token=" in dom
    assert 'data-ready="1"' not in dom
    dom = load_page(f"{base}/dashboard#token=not-the-token-0123456789", tmp_path / "wrong").stdout
    assert 'data-auth="refused"' in dom and "refused this token" in dom


def test_dashboard_renders_charts_with_data_and_no_console_errors(lagging_api, tmp_path):
    base, group = lagging_api
    for offset in (10, 20, 30):  # a consumer at work: a consume rate, hence a time to drain
        commit_and_wait(base, group, offset)
    result = load_page(f"{base}/dashboard#token={TOKEN}", tmp_path)
    dom = result.stdout
    assert 'data-ready="1"' in dom, result.stderr[-2000:]
    for chart in ("chart-lag", "chart-lag-seconds", "chart-drain"):
        tag = (
            dom.split(f'data-testid="{chart}"')[0].rsplit("<canvas", 1)[1]
            + dom.split(f'data-testid="{chart}"')[1].split(">")[0]
        )
        points = int(tag.split('data-points="')[1].split('"')[0])
        assert points >= 2, (chart, tag)
    assert "<tr><td>" in dom  # the partitions table has rows
    dlq = dom.split('data-testid="dlq-reasons"')[1].split("</table>")[0]
    assert "not valid JSON: &lt;unexpected end&gt;</td><td>2</td>" in dlq, dlq  # escaped, counted
    assert "3 dead letters" in dom
    before, after = dom.split('data-testid="chart-scores"', 1)
    scores = before.rsplit("<canvas", 1)[1] + after.split(">", 1)[0]
    assert 'data-total="0"' in scores, scores  # this API process has no model: nothing scored
    assert "no model serving · 0 scores answered" in dom
    drain_now = dom.split('data-testid="drain-now"')[1].split(">", 1)[1].split("<", 1)[0]
    assert "events/s" in drain_now and "drains in" in drain_now, drain_now
    console_errors = [
        line
        for line in result.stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)
    ]
    assert console_errors == []
