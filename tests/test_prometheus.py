"""Monitoring: the Prometheus alert rules and their unit tests (promtool), the compose Prometheus
config, the real /metrics of a running API and consumer (promtool check metrics), a real Prometheus
server scraping them, and the Grafana dashboard, all over metric names the code emits.

One API and one consumer process run for the module, on topics of their own: the consumer drains
a small replay (with one invalid event, dead-lettered) in its group, while the API watches another
group that never consumed, so its lag (the whole log) holds still and can be compared exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamflow import config, kafka_clients, schema
from streamflow.datagen.generate import generate
from streamflow.kafka_topics import ensure_topics
from streamflow.net import free_port
from streamflow.subprocesses import stop_process, stop_processes
from streamflow.topics import dead_letter_topic, table_topics, topic_of
from tests import pipeline

MONITORING = config.REPO_ROOT / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
ALERTS_TEST = MONITORING / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "streamflow.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = MONITORING / "grafana" / "provisioning" / "dashboards" / "streamflow.yml"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
INSTALL = "scripts/test.sh installs Debian's prometheus package"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool is not installed ({INSTALL})")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=f"prometheus is not installed ({INSTALL})")

# Names the dashboard or the alerts may use before the code emits them, each with its reason (none now).
NOT_YET_EMITTED: set[str] = set()
METRIC_NAME = re.compile(r"\bstreamflow_[a-z0-9_]+")
USERS = 20


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local test servers
        return resp.read()


def wait_for(read, what: str, timeout: float, logs: tuple[Path, ...] = ()):
    """read() until it returns something truthy (OSError counts as "not yet"); its value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = read()
            if value:
                return value
            last = value
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists()
            )
            pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})\n{tails}", pytrace=False)
        time.sleep(0.3)


def samples(text: str) -> dict[str, list]:
    """metric family name -> its samples, from Prometheus text output."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def emitted_names(text: str) -> set[str]:
    """Every series name a /metrics text offers: its samples', plus, for families without samples
    yet, a gauge's name, a counter's _total and a histogram's _bucket/_sum/_count (the parser names a
    counter family without its _total, which is no series name)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# --- a running API and consumer --------------------------------------------------------------------


@dataclass
class Stack:
    api: str  # http://127.0.0.1:PORT
    consumer: str  # http://127.0.0.1:PORT
    watched_group: str
    topics: list[str]
    logs: tuple[Path, ...]

    def api_metrics(self) -> str:
        return http_get(f"{self.api}/metrics").decode()

    def consumer_metrics(self) -> str:
        return http_get(f"{self.consumer}/metrics").decode()

    def lag(self) -> dict:
        return orjson.loads(http_get(f"{self.api}/lag"))


@pytest.fixture(scope="module")
def stack(pg_settings, kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    prefix = pipeline.fresh_prefix()
    procs: list[subprocess.Popen] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMFLOW_TOPIC_PREFIX", prefix)
        try:
            pipeline.reset_store()
            ensure_topics(table_topics() + [dead_letter_topic()], partitions=2)
            generate(tmp / "data", users=USERS, seed=13, progress=False)
            pipeline.replay([tmp / "data" / "month_000"])
            producer = kafka_clients.producer("test")
            producer.send(topic_of(schema.table("users")), key=b"1234-ABCDE", value=None)  # a tombstone
            producer.flush()
            producer.close()
            # The watched group: a consumer that stopped at the log start (committed 0 everywhere),
            # so its lag stays put and its partitions turn STALL (a group without any commit would
            # be NEW: no alarm).
            pipeline.commit_offsets(
                f"{prefix}-idle", {TopicPartition(t, p): 0 for t in table_topics() for p in range(2)}
            )

            consumer_port, api_port = free_port(), free_port()
            logs = (tmp / "consumer.log", tmp / "api.log")
            procs.append(
                pipeline.consumer_process(
                    f"{prefix}-consumers", "--metrics-port", str(consumer_port), log_path=logs[0]
                )
            )
            api_log = open(logs[1], "wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "api.cli", "--host", "127.0.0.1", "--port", str(api_port)],
                    cwd=config.REPO_ROOT,
                    stdout=api_log,
                    stderr=api_log,
                    env={
                        **os.environ,
                        "STREAMFLOW_CONSUMER_GROUP": f"{prefix}-idle",
                        "STREAMFLOW_LAG_INTERVAL": "1",
                        "STREAMFLOW_CONSUMER_METRICS_URL": f"http://127.0.0.1:{consumer_port}/metrics",
                    },
                )
            )
            s = Stack(
                api=f"http://127.0.0.1:{api_port}",
                consumer=f"http://127.0.0.1:{consumer_port}",
                watched_group=f"{prefix}-idle",
                topics=table_topics(),
                logs=logs,
            )

            def consumer_done() -> bool:
                got = samples(s.consumer_metrics())
                written = sum(x.value for x in got["streamflow_events_written"])
                dead = sum(x.value for x in got["streamflow_events_dead_lettered"])
                return (
                    written == len(schema.TABLES) * USERS
                    and dead == 1
                    and "streamflow_last_commit_timestamp_seconds" in got
                )

            wait_for(consumer_done, "the consumer writes every event and dead-letters one", 180, logs)

            def lag_sampled() -> bool:  # a status needs two samples
                return bool(s.lag().get("status")) and "streamflow_consumer_group_status{" in s.api_metrics()

            wait_for(lag_sampled, "the API samples the lag of the watched group", 60, logs)
            yield s
        finally:
            stop_processes(procs)
            pipeline.delete_topics(prefix)


# --- the rules ------------------------------------------------------------------------------------


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


@needs_promtool
def test_alert_rules_pass_promtool_check_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_alert_rule_unit_tests_pass():
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_an_actionable_text_and_a_firing_and_a_quiet_unit_test():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert {
        "StreamflowConsumerLagHigh",
        "StreamflowConsumerGroupErr",
        "StreamflowPartitionStopped",
        "StreamflowDeadLetters",
        "StreamflowConsumerDown",
        "StreamflowConsumerNotCommitting",
        "StreamflowFreshnessP99OverBudget",
        "StreamflowApiErrorRate",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    firing, quiet = set(), set()
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(names) - firing == set(), "alerts without a firing unit test"
    assert set(names) - quiet == set(), "alerts without a not-firing unit test"
    assert firing | quiet <= set(names), "unit tests of alerts that do not exist"


def test_freshness_alert_holds_its_budget_of_one_second_as_a_constant():
    [rule] = [r for r in alert_rules() if r["alert"] == "StreamflowFreshnessP99OverBudget"]
    assert "histogram_quantile(0.99" in rule["expr"]
    assert "streamflow_event_to_online_seconds_bucket" in rule["expr"]
    assert re.search(r"\)\s*>\s*1\s*#", rule["expr"]), rule["expr"]
    assert rule["labels"]["budget_seconds"] == "1"


@needs_promtool
def test_compose_prometheus_config_passes_promtool_check_config(tmp_path):
    # as mounted in the container: prometheus.yml with alerts.yml beside it, and the scrape token's
    # file that compose's entrypoint writes there (empty without a token)
    shutil.copy(PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "metrics_token").write_text("")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


# --- the real /metrics ----------------------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("which", ["api", "consumer"])
def test_real_metrics_pass_promtool_check_metrics(stack, which):
    text = stack.api_metrics() if which == "api" else stack.consumer_metrics()
    assert "streamflow_" in text
    result = promtool("check", "metrics", stdin=text)
    # promtool exits non-zero on any lint problem too; it reports none for either endpoint
    assert result.returncode == 0, f"{which}: {result.stdout}{result.stderr}"
    assert (result.stdout + result.stderr).strip() == "", f"{which}: {result.stdout}{result.stderr}"


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    return exprs


def test_every_metric_name_in_the_alerts_and_the_dashboard_is_emitted_by_the_code(stack):
    emitted = emitted_names(stack.api_metrics()) | emitted_names(stack.consumer_metrics())
    used = {
        "alerts.yml": {n for r in alert_rules() for n in METRIC_NAME.findall(r["expr"])},
        "dashboard": {n for e in dashboard_exprs() for n in METRIC_NAME.findall(e)},
    }
    assert len(used["alerts.yml"]) >= 9 and len(used["dashboard"]) >= 12, used
    for where, names in used.items():
        assert names - emitted - NOT_YET_EMITTED == set(), f"{where} uses names no /metrics offers"
    assert NOT_YET_EMITTED - emitted <= used["dashboard"] | used["alerts.yml"], (
        "allow-listed names nobody uses"
    )


def test_dashboard_shows_the_required_metrics_from_the_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    exprs = " ".join(dashboard_exprs())
    for name in (
        "streamflow_consumer_lag_messages",
        "streamflow_consumer_lag_seconds",
        "streamflow_consumer_group_status",
        "streamflow_consumer_group_drain_seconds",
        "streamflow_events_consumed_total",
        "streamflow_events_written_total",
        "streamflow_events_dead_lettered_total",
        "streamflow_write_latency_seconds_bucket",
        "streamflow_event_to_online_seconds_bucket",
        "streamflow_api_requests_total",
        "streamflow_api_request_duration_seconds_bucket",
    ):
        assert name in exprs, name
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert 'status=~"5.."' in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"]), panel["title"]
    [provider] = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # where compose mounts the JSON


# --- a real Prometheus server ---------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            body = orjson.loads(http_get(f"{self.url}/api/v1/{path}{query}"))
        except urllib.error.HTTPError as exc:
            body = orjson.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    """A prometheus server scraping the stack every second, with alerts.yml loaded."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs Debian's prometheus package)")
    tmp = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, tmp / "alerts.yml")
    jobs = {"streamflow-api": stack.api, "streamflow-consumer": stack.consumer}  # the compose job names
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [url.removeprefix("http://")]}]}
                    for job, url in jobs.items()
                ],
            }
        )
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp,
            stdout=out,
            stderr=out,
        )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}", log)
        wait_for(lambda: http_get(f"{server.url}/-/ready"), "prometheus ready", 60, (log,))
        yield server
    finally:
        stop_process(proc)


@needs_prometheus
def test_prometheus_scrapes_the_lag_per_partition_that_the_api_reports(stack, prometheus):
    lag = stack.lag()
    assert lag["group"] == stack.watched_group
    expected = {
        (p["topic"], str(p["partition"])): p["lag"] for t in lag["sample"]["topics"] for p in t["partitions"]
    }
    assert {t for t, _ in expected} == set(stack.topics) and sum(expected.values()) > 0, expected

    def scraped() -> dict | None:
        result = prometheus.query(f'streamflow_consumer_lag_messages{{group="{stack.watched_group}"}}')
        got = {(r["metric"]["topic"], r["metric"]["partition"]): float(r["value"][1]) for r in result}
        return got if got.keys() == expected.keys() else None

    got = wait_for(scraped, "the lag series of the test's topics in prometheus", 60, (prometheus.log,))
    assert got == expected  # nothing consumes or produces: the figures hold still
    [series] = prometheus.query(f'streamflow_consumer_group_lag_messages{{group="{stack.watched_group}"}}')
    assert float(series["value"][1]) == lag["sample"]["lag"]
    assert series["metric"]["job"] == "streamflow-api"


@needs_prometheus
def test_prometheus_scrapes_the_consumer_and_evaluates_every_alert_rule(stack, prometheus):
    def dead_letters() -> list[dict]:
        return prometheus.query('streamflow_events_dead_lettered_total{job="streamflow-consumer"}')

    [series] = wait_for(
        dead_letters, "the consumer's dead-letter counter in prometheus", 60, (prometheus.log,)
    )
    assert series["metric"]["topic"] == topic_of(schema.table("users")) and float(series["value"][1]) == 1
    ups = {r["metric"]["job"]: float(r["value"][1]) for r in prometheus.query("up")}
    assert ups == {"streamflow-api": 1.0, "streamflow-consumer": 1.0}

    def rules() -> list[dict]:
        return [r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]

    def evaluated_over_the_scrapes() -> bool:
        states = {r["name"]: r["state"] for r in rules() if r.get("health") == "ok"}
        # the watched group stopped at the log start: its partitions are STALL or STOP, the group ERR
        return (
            states.get("StreamflowConsumerGroupErr") in ("pending", "firing")
            and states.get("StreamflowConsumerDown") == states.get("StreamflowApiDown") == "inactive"
        )

    wait_for(evaluated_over_the_scrapes, "the rules evaluated over the scraped series", 60, (prometheus.log,))
    got = rules()
    assert sorted(r["name"] for r in got) == sorted(r["alert"] for r in alert_rules())
    assert [r for r in got if r["health"] != "ok"] == []


@needs_prometheus
def test_every_dashboard_query_runs_on_prometheus(stack, prometheus):
    wait_for(
        lambda: prometheus.query("streamflow_consumer_group_lag_messages"),
        "the API scraped",
        60,
        (prometheus.log,),
    )
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric, label = expr.removeprefix("label_values(").removesuffix(")").split(", ")
            body = prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert stack.watched_group in body["data"], (expr, body)
            continue
        runnable = expr.replace("$__rate_interval", "1m").replace("$group", ".*")
        prometheus.query(runnable)  # a query Prometheus rejects fails here, naming it
