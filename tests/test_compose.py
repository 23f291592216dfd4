"""docker-compose.yml is valid and runs the whole stack in the intended order; with
docker-compose.cluster.yml on top, Kafka is a three-broker cluster."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from streamflow import config

COMPOSE = config.REPO_ROOT / "docker-compose.yml"
CLUSTER = config.REPO_ROOT / "docker-compose.cluster.yml"
APP_SERVICES = ("init", "producer", "consumer", "api")


def compose(*files, env: dict | None = None, quiet: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed (scripts/test.sh installs it with apt-get)", pytrace=False
        )
    args = [exe, "--project-directory", str(config.REPO_ROOT)]
    for f in files:
        args += ["-f", str(f)]
    args += ["config", "-q"] if quiet else ["config"]
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_compose_file_is_valid():
    result = compose(COMPOSE)
    assert result.returncode == 0, result.stderr


def test_compose_cluster_override_is_valid():
    result = compose(COMPOSE, CLUSTER)
    assert result.returncode == 0, result.stderr


def test_compose_services_have_health_checks_and_ordering():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"postgres", "kafka", "init", "producer", "consumer", "api"} <= set(services)
    for name in ("postgres", "kafka", "consumer", "api"):
        assert "healthcheck" in services[name], name
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("producer", "consumer", "api"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # the stack's credentials are the local defaults of the code (one set of values)
    env = services["postgres"]["environment"]
    assert env["POSTGRES_USER"] == config.default("POSTGRES_USER")
    assert env["POSTGRES_DB"] == config.default("POSTGRES_DB")


def test_compose_broker_takes_message_max_bytes_from_the_clients_variable():
    env = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["environment"]
    assert env["KAFKA_MESSAGE_MAX_BYTES"] == "${KAFKA_MESSAGE_MAX_BYTES:-2097152}"
    merged = yaml.safe_load(compose(COMPOSE, env={"KAFKA_MESSAGE_MAX_BYTES": "3000000"}, quiet=False).stdout)
    assert merged["services"]["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"] == "3000000"


def test_compose_cluster_override_runs_three_brokers_with_rf3_and_min_isr2():
    done = compose(COMPOSE, CLUSTER, env={"KAFKA_MESSAGE_MAX_BYTES": "3000000"}, quiet=False)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    voters = "1@kafka1:9093,2@kafka2:9093,3@kafka3:9093"
    for n in (1, 2, 3):
        node = services[f"kafka{n}"]
        env = node["environment"]
        assert node["image"].startswith("apache/kafka:")
        assert env["KAFKA_NODE_ID"] == str(n)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka{n}:9092"
        for key, value in {
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
            "KAFKA_MESSAGE_MAX_BYTES": "3000000",
        }.items():
            assert env[key] == value, (n, key)
        assert "healthcheck" in node
    # one cluster id, one data volume per node
    assert len({services[f"kafka{n}"]["environment"]["CLUSTER_ID"] for n in (1, 2, 3)}) == 1

    def source(volume):  # "name:/path[:mode]" (docker-compose 1.x) or {"source": name, ...}
        return volume["source"] if isinstance(volume, dict) else volume.split(":")[0]

    assert len({source(services[f"kafka{n}"]["volumes"][0]) for n in (1, 2, 3)}) == 3
    # the app services use all three brokers and the broker's message limit
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka1:9092,kafka2:9092,kafka3:9092", name
        assert env["KAFKA_MESSAGE_MAX_BYTES"] == "3000000", name
        assert env["POSTGRES_HOST"] == "postgres", name  # the base file's settings stay
    for name in ("producer", "consumer"):
        for n in (1, 2, 3):
            assert services[name]["depends_on"][f"kafka{n}"]["condition"] == "service_healthy"
    # the base file's `kafka` runs no broker any more: a gate that waits for all three
    gate = services["kafka"]
    assert gate["entrypoint"][0] == "/bin/sh"
    assert "kafka1:9092,kafka2:9092,kafka3:9092" in " ".join(gate["healthcheck"]["test"])


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only) of a service's volumes ("src:dst[:mode]" strings)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_compose_runs_prometheus_and_grafana_provisioned_from_the_repository_on_loopback_only():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, image in (("prometheus", "prom/prometheus:"), ("grafana", "grafana/grafana:")):
        assert services[name]["image"].startswith(image), name
        tag = services[name]["image"].removeprefix(image)
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a release tag, not {tag!r}"
        ports = services[name]["ports"]
        assert ports and all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
    expected = {
        "prometheus": {
            "/etc/prometheus/prometheus.yml": "monitoring/prometheus/prometheus.yml",
            "/etc/prometheus/alerts.yml": "monitoring/prometheus/alerts.yml",
        },
        "grafana": {
            "/etc/grafana/provisioning": "monitoring/grafana/provisioning",
            "/var/lib/grafana/dashboards": "monitoring/grafana/dashboards",
        },
    }
    for name, binds in expected.items():
        mounts = _mounts(services[name])
        for target, source in binds.items():
            assert mounts[target] == (f"./{source}", True), (name, target, mounts)
            assert (config.REPO_ROOT / source).exists(), source
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    # the admin password comes from the environment (or .env), with a local default
    env = services["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    merged = yaml.safe_load(compose(COMPOSE, env={"GRAFANA_ADMIN_PASSWORD": "s3cret"}, quiet=False).stdout)
    assert merged["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


def test_prometheus_scrapes_the_compose_api_and_consumer_and_loads_the_alerts():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prom = yaml.safe_load((config.REPO_ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prom["scrape_configs"]
    }
    command = services["consumer"]["command"]
    consumer_port = command[command.index("--metrics-port") + 1]
    assert targets == {"streamflow-api": ["api:8000"], "streamflow-consumer": [f"consumer:{consumer_port}"]}
    assert "8000" in services["api"]["command"]
    assert prom["rule_files"] == ["alerts.yml"]  # beside prometheus.yml in the container too
    datasources = yaml.safe_load(
        (config.REPO_ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert [d["url"] for d in datasources["datasources"]] == ["http://prometheus:9090"]
