"""docker-compose.yml is valid and runs the whole stack in the intended order."""

import shutil
import subprocess

import pytest
import yaml

from streamflow import config

COMPOSE = config.REPO_ROOT / "docker-compose.yml"


def test_compose_file_is_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it with apt-get)", pytrace=False)
    result = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
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
    assert env["POSTGRES_USER"] == config._DEFAULTS["POSTGRES_USER"]
    assert env["POSTGRES_DB"] == config._DEFAULTS["POSTGRES_DB"]
