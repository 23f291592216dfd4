"""Feast's metrics module must not put StreamFlow's Prometheus metrics in multiprocess mode
(streamflow.feast_metrics_guard). Each check runs in a fresh interpreter: the mode is chosen at a
process's first import of prometheus_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from streamflow import config

PROBE = """
import json, os, sys
import streamflow.feature_store as fs
fs._feature_store_class()  # imports feast.feature_store, feast.feature_server, feast.metrics
from prometheus_client import CollectorRegistry, Counter
first, second = CollectorRegistry(), CollectorRegistry()
a = Counter("probe", "a", registry=first)
a.inc(5)
b = Counter("probe", "a", registry=second)
print(json.dumps({
    "feast_metrics": "feast.metrics" in sys.modules,
    "variables": sorted(k for k in os.environ if k.upper().startswith("PROMETHEUS_MULTIPROC")),
    "second_starts_at": second.get_sample_value("probe_total"),
}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=config.REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_feasts_store_leaves_metrics_in_memory_and_the_environment_unchanged():
    seen = probe()
    assert seen["feast_metrics"]  # the module that sets the variables did run
    assert seen["variables"] == []  # not left for child processes
    assert seen["second_starts_at"] == 0.0  # a new registry's metric does not start from another's


def test_an_operators_multiprocess_directory_is_left_alone(tmp_path):
    seen = probe(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert seen["feast_metrics"]
    assert "PROMETHEUS_MULTIPROC_DIR" in seen["variables"]
    assert seen["second_starts_at"] == 5.0  # multiprocess mode, as the operator asked: values shared by name
