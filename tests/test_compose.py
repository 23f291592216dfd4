"""docker-compose.yml is valid and runs the whole stack in the intended order; with
docker-compose.cluster.yml on top, Kafka is a three-broker cluster. Credentials come from .env
(.env.example here: the only one in a fresh clone), each process gets its own role's, and every
published port is on the host's loopback."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamflow import config

COMPOSE = config.REPO_ROOT / "docker-compose.yml"
CLUSTER = config.REPO_ROOT / "docker-compose.cluster.yml"
ENV_EXAMPLE = config.REPO_ROOT / ".env.example"
APP_SERVICES = ("init", "producer", "consumer", "api")
PASSWORDS = (
    "POSTGRES_PASSWORD",
    "POSTGRES_CONSUMER_PASSWORD",
    "POSTGRES_API_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


def compose(
    *files, env: dict | None = None, quiet: bool = True, env_file: Path | None = ENV_EXAMPLE
) -> subprocess.CompletedProcess:
    """``docker-compose config`` of the files, with the variables of ``env_file`` (.env.example by
    default: CI has no .env) and ``env`` (the environment wins over the file, as in compose)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed (scripts/test.sh installs it with apt-get)", pytrace=False
        )
    args = [exe, "--project-directory", str(config.REPO_ROOT)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    args += ["config", "-q"] if quiet else ["config"]
    outer = {k: v for k, v in os.environ.items() if k not in PASSWORDS and k not in config.VARIABLES}
    return subprocess.run(args, capture_output=True, text=True, env={**outer, **(env or {})})


def merged(*files, **kwargs) -> dict:
    done = compose(*files, quiet=False, **kwargs)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


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
    for name in ("postgres", "kafka", "consumer", "api", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():  # every long-running service; init and producer end
        assert "healthcheck" in service or service.get("restart") == "no", name
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("producer", "consumer", "api"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # the stack's role and database names are the local defaults of the code (one set of values)
    env = merged(COMPOSE)["postgres"]["environment"]
    assert env["POSTGRES_USER"] == config.default("POSTGRES_USER")
    assert env["POSTGRES_DB"] == config.default("POSTGRES_DB")


def test_compose_broker_takes_message_max_bytes_from_the_clients_variable():
    env = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["environment"]
    assert env["KAFKA_MESSAGE_MAX_BYTES"] == "${KAFKA_MESSAGE_MAX_BYTES:-2097152}"
    kafka = merged(COMPOSE, env={"KAFKA_MESSAGE_MAX_BYTES": "3000000"})["kafka"]
    assert kafka["environment"]["KAFKA_MESSAGE_MAX_BYTES"] == "3000000"


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
        # inside the network as kafka<n>:9092; from the host as 127.0.0.1:1909<n+1>, published there
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka{n}:9092,HOST://127.0.0.1:{19091 + n}"
        assert "HOST://:19092" in env["KAFKA_LISTENERS"].split(",")
        assert "HOST:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        assert _published(node) == [f"127.0.0.1:{19091 + n}:19092/tcp"] or _published(node) == [
            f"127.0.0.1:{19091 + n}:19092"
        ]
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
    [script] = services["prometheus"]["command"]  # the entrypoint's shell (below), then prometheus
    assert "exec /bin/prometheus --config.file=/etc/prometheus/prometheus.yml" in " ".join(script.split())
    # the admin password comes from the environment (or .env), without a default
    env = services["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?set it in .env, see .env.example}"
    grafana = merged(COMPOSE, env={"GRAFANA_ADMIN_PASSWORD": "s3cret"})["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


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


# -- credentials and ports ------------------------------------------------------------------------


def _published(service: dict) -> list[str]:
    """A service's published ports as ``docker-compose config`` prints them (long or short form)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append(f"{port.get('host_ip', '')}:{port.get('published', '')}:{port['target']}")
        else:
            out.append(str(port))
    return out


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, CLUSTER)], ids=["single", "cluster"])
def test_every_published_port_is_on_the_loopback_only(files):
    services = merged(*files)
    published = {name: _published(service) for name, service in services.items()}
    assert published["postgres"] and published["kafka"]  # published, on the loopback (below)
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def _password_lines(path: Path) -> list[str]:
    """Lines of a compose file that give a password-like key a value that is no ${VARIABLE}."""
    bad = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        match = re.match(
            r"\s*-?\s*[\"']?([A-Za-z0-9_]*(PASSWORD|SECRET|PASSWD)[A-Za-z0-9_]*)[\"']?\s*[:=]\s*(.*)", line
        )
        if not match or match.group(3).strip() == "":
            continue
        value = match.group(3).strip().strip("\"'")
        if not re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value):
            bad.append(f"{path.name}:{n}: {line.strip()}")
    return bad


def test_no_password_is_written_in_the_compose_files_and_a_missing_one_stops_compose():
    assert _password_lines(COMPOSE) == [] and _password_lines(CLUSTER) == []
    compose_text = COMPOSE.read_text() + CLUSTER.read_text()
    for name in PASSWORDS:
        assert f"${{{name}:?" in compose_text, name
        assert f"${{{name}:-" not in compose_text, f"{name} has a default in the compose file"
    # .env.example lists every variable the files read without a default; .env is never committed
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(PASSWORDS) <= set(example)
    assert ".env" in (config.REPO_ROOT / ".gitignore").read_text().splitlines()
    # without .env (or the variables), compose names the missing variable and where to set it
    done = compose(COMPOSE, env_file=None, env={"COMPOSE_PROJECT_NAME": "streamflow-missing-env"})
    if (config.REPO_ROOT / ".env").exists():
        pytest.skip("a .env exists in the repository: compose reads it")
    assert done.returncode != 0
    assert "set it in .env, see .env.example" in done.stderr


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, CLUSTER)], ids=["single", "cluster"])
def test_each_process_gets_only_its_own_roles_credentials(files):
    services = merged(*files, env={"POSTGRES_PASSWORD": "own3r", "POSTGRES_API_PASSWORD": "ap1"})
    owner = {"POSTGRES_USER", "POSTGRES_PASSWORD"}
    consumer = {"POSTGRES_CONSUMER_USER", "POSTGRES_CONSUMER_PASSWORD"}
    api = {"POSTGRES_API_USER", "POSTGRES_API_PASSWORD"}
    credentials = owner | consumer | api

    def given(name):
        return credentials & set(services[name]["environment"])

    assert given("init") == credentials  # apply: the owner, and the passwords it gives the roles
    assert given("consumer") == consumer
    assert given("api") == api
    assert given("producer") == set()  # Kafka only
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "own3r"
    assert services["api"]["environment"]["POSTGRES_API_PASSWORD"] == "ap1"
    for name in ("consumer", "api"):
        assert services[name]["environment"][f"POSTGRES_{name.upper()}_USER"] == config.default(
            f"POSTGRES_{name.upper()}_USER"
        )


# -- tokens, metrics URL and the one-shot jobs ------------------------------------------------------


def test_the_api_gets_its_tokens_and_the_consumers_metrics_url_and_prometheus_scrapes_with_the_token():
    services = merged(COMPOSE, env={"STREAMFLOW_API_TOKEN": "tok-a,tok-b", "STREAMFLOW_METRICS_TOKEN": "scr"})
    api = services["api"]["environment"]
    assert api["STREAMFLOW_API_TOKEN"] == "tok-a,tok-b" and api["STREAMFLOW_METRICS_TOKEN"] == "scr"
    # inside the API's container 127.0.0.1:9108 is the API itself: the consumer is `consumer`
    command = services["consumer"]["command"]
    port = command[command.index("--metrics-port") + 1]
    assert api["STREAMFLOW_CONSUMER_METRICS_URL"] == f"http://consumer:{port}/metrics"
    for name in ("consumer", "producer", "init"):  # the tokens are the API's
        assert "STREAMFLOW_API_TOKEN" not in services[name]["environment"], name
    # unset in .env: empty, which the settings read as no token
    assert merged(COMPOSE)["api"]["environment"]["STREAMFLOW_API_TOKEN"] == ""
    prom = yaml.safe_load((config.REPO_ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    [api_job] = [job for job in prom["scrape_configs"] if job["job_name"] == "streamflow-api"]
    assert api_job["authorization"] == {"type": "Bearer", "credentials_file": "metrics_token"}


def _as_run(command: str) -> str:
    """A command as the container runs it: ``docker-compose config`` keeps compose's ``$$`` escape."""
    return command.replace("$$", "$")


def _token_file_written_by_prometheus_entrypoint(tmp_path: Path, env: dict) -> str:
    """Run the compose Prometheus entrypoint's shell with a stand-in prometheus; the token file."""
    service = merged(COMPOSE, env=env)["prometheus"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    [script] = service["command"]
    script = _as_run(script).replace("/etc/prometheus/", f"{tmp_path}/").replace("/bin/prometheus", "true")
    done = subprocess.run(["sh", "-c", script], env=service["environment"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "metrics_token").read_text()


def test_prometheus_scrapes_with_the_metrics_token_else_the_first_api_token_else_none(tmp_path):
    both = {"STREAMFLOW_API_TOKEN": "tok-a,tok-b", "STREAMFLOW_METRICS_TOKEN": "scr"}
    assert _token_file_written_by_prometheus_entrypoint(tmp_path, both) == "scr"
    assert (
        _token_file_written_by_prometheus_entrypoint(tmp_path, {"STREAMFLOW_API_TOKEN": "tok-a,tok-b"})
        == "tok-a"
    )
    assert _token_file_written_by_prometheus_entrypoint(tmp_path, {}) == ""


def _run_job(name: str, data: Path, env: dict | None = None) -> list[str]:
    """Run a one-shot service's rendered shell command with /app/data at ``data`` (and
    /app/mlartifacts beside it) and a stand-in ``streamflow`` that logs its arguments; the commands
    it ran."""
    service = merged(COMPOSE)[name]
    assert service["command"][:2] == ["sh", "-c"], service["command"]
    models = data.parent / "mlartifacts"
    models.mkdir(exist_ok=True)
    script = (
        _as_run(service["command"][2])
        .replace("/app/data", str(data))
        .replace("/app/mlartifacts", str(models))
    )
    bin_dir = data.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = data.parent / "calls.log"
    log.write_text("")
    fake = bin_dir / "streamflow"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        f'if [ "$1" = generate ]; then mkdir -p {data}/month_001 && touch {data}/month_001/labels.csv; fi\n'
    )
    fake.chmod(0o755)
    run_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
    done = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in log.read_text().splitlines()]


def test_init_generates_loads_and_trains_once_and_again_when_asked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert _run_job("init", data) == ["generate", "apply", "load", "materialize", "train"]
    assert _run_job("init", data) == ["apply", "materialize"]  # the next `up`
    assert _run_job("init", data, {"STREAMFLOW_RELOAD": "1"}) == ["apply", "load", "materialize"]
    assert _run_job("init", data, {"STREAMFLOW_RETRAIN": "1"}) == ["apply", "materialize", "train"]


def test_the_api_reads_the_models_that_init_trains():
    services = merged(COMPOSE)
    for name in ("init", "api"):
        env = services[name]["environment"]
        assert env["STREAMFLOW_MLFLOW_ARTIFACTS"] == "/app/mlartifacts", name
        assert any(v.startswith("models:/app/mlartifacts") for v in services[name]["volumes"]), name
    assert services["api"]["volumes"] == ["models:/app/mlartifacts:ro"]


def test_the_producer_replays_once_and_again_when_asked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert _run_job("producer", data) == ["produce"]
    assert _run_job("producer", data) == []  # the next `up`
    assert _run_job("producer", data, {"STREAMFLOW_REPLAY": "1"}) == ["produce"]
