"""A private Kafka cluster for tests: KAFKA_BROKERS nodes started by ``scripts/services.sh`` on
ports of their own, with their own data, so fault tests never disturb the shared broker.

    cluster = Cluster(port=19092, state_dir=REPO / ".services" / "kafka-cluster-test")
    cluster.up()                      # KAFKA_BROKERS=3 KAFKA_PORT=19092 ... services.sh start-kafka
    cluster.kill(2)                   # SIGKILL node 2 (and wait until it is gone)
    cluster.start_node(2)             # start it again, wait until it answers
    cluster.wait_all_in_sync(["t"])   # every partition back to its full ISR
    cluster.down()

    broker = SingleBroker(29092, state_dir, sasl=("alice", "secret"))   # KAFKA_SASL=1: SCRAM-SHA-512
    broker.client_env()               # what clients set to reach it (bootstrap, protocol, credentials)

Every Kafka client comes from ``streamflow.kafka_clients``; every wait polls a condition until a
deadline (no fixed sleeps).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import errors as kafka_errors
from kafka.errors import KafkaError
from pydantic import SecretStr

from streamflow import config, kafka_clients
from streamflow.errors import ServiceUnavailable

SERVICES = config.REPO_ROOT / "scripts" / "services.sh"
DEFAULT_STATE_DIR = config.REPO_ROOT / ".services" / "kafka-cluster-test"
SHARED_STATE = Path(os.environ.get("STREAMFLOW_STATE_DIR") or config.REPO_ROOT / ".services")
"""Where ``scripts/services.sh`` keeps the main broker, and the jars every broker runs from."""


def share_broker_jars(state_dir: Path) -> None:
    """Let a broker with a state directory of its own run from the main broker's jars (a link),
    instead of fetching them again."""
    lib, shared = state_dir / "kafka" / "lib", SHARED_STATE / "kafka" / "lib"
    if not lib.exists() and (shared / ".complete").exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        lib.symlink_to(shared)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds pass
    (AssertionError). Kafka errors count as "not yet": a cluster in the middle of a failover
    answers some requests with them."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
        except (KafkaError, ServiceUnavailable, OSError) as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            why = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s{why}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    """The process runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


SASL_MECHANISM = "SCRAM-SHA-512"
"""The mechanism of ``services.sh`` with KAFKA_SASL=1."""


class Cluster:
    """``brokers`` KRaft nodes (broker and controller each) on ``port``, ``port+2``, … (clients)
    and one port above each (controllers), data under ``state_dir/node-<n>``. With ``sasl=(user,
    password)``, the client listener is SASL_PLAINTEXT with that SCRAM-SHA-512 user (KAFKA_SASL=1)."""

    def __init__(
        self,
        port: int = 19092,
        state_dir: Path | str | None = None,
        brokers: int = 3,
        host: str = "127.0.0.1",
        heap: str | None = None,
        start_timeout: int = 120,
        sasl: tuple[str, str] | None = None,
    ):
        self.port = port
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR)
        self.brokers = brokers
        self.host = host
        self.heap = heap
        self.start_timeout = start_timeout
        self.sasl = sasl
        self._admin = None

    # --- where things are --------------------------------------------------------------------

    @property
    def nodes(self) -> list[int]:
        return list(range(1, self.brokers + 1))

    def client_port(self, n: int) -> int:
        return self.port + 2 * (n - 1)

    def controller_port(self, n: int) -> int:
        return self.client_port(n) + 1

    def node_dir(self, n: int) -> Path:
        return self.state_dir / f"node-{n}"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{self.client_port(n)}" for n in self.nodes)

    def settings(self) -> kafka_clients.KafkaSettings:
        """Client settings (from the environment) pointed at this cluster, with its credentials."""
        s = kafka_clients.settings(self.bootstrap)
        if self.sasl:
            user, password = self.sasl
            s = s.model_copy(
                update=dict(
                    security_protocol="SASL_PLAINTEXT",
                    sasl_mechanism=SASL_MECHANISM,
                    sasl_username=user,
                    sasl_password=SecretStr(password),
                )
            )
        return s

    def client_env(self, password: str | None = None) -> dict[str, str]:
        """The variables a StreamFlow command sets to use this cluster (``password``: another one
        than the cluster's, e.g. a wrong one)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        if self.sasl:
            user, own = self.sasl
            env.update(
                KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                KAFKA_SASL_MECHANISM=SASL_MECHANISM,
                KAFKA_SASL_USERNAME=user,
                KAFKA_SASL_PASSWORD=own if password is None else password,
            )
        return env

    def ports_in_use(self) -> list[int]:
        """The cluster's ports that something listens on (before ``up()``: someone else)."""
        used = []
        for n in self.nodes:
            for port in (self.client_port(n), self.controller_port(n)):
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex((self.host, port)) == 0:
                        used.append(port)
        return used

    # --- the services script -----------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KAFKA_CONTROLLER_PORT", None)  # a cluster's controller ports follow KAFKA_PORT
        env.update(
            KAFKA_BROKERS=str(self.brokers),
            KAFKA_PORT=str(self.port),
            KAFKA_HOST=self.host,
            KAFKA_STATE_DIR=str(self.state_dir),
            KAFKA_START_TIMEOUT=str(self.start_timeout),
        )
        if self.heap:
            env["KAFKA_HEAP"] = self.heap
        env.pop("KAFKA_SASL", None)
        if self.sasl:
            env.update(KAFKA_SASL="1", KAFKA_SASL_USERNAME=self.sasl[0], KAFKA_SASL_PASSWORD=self.sasl[1])
        return env

    def run(
        self, *args: str | int, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(SERVICES), *map(str, args)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout or self.start_timeout + 60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"services.sh {' '.join(map(str, args))} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr[-3000:]}"
            )
        return done

    def up(self) -> None:
        """Start every node; returns when each answers and all brokers registered."""
        self.run("start-kafka")

    def down(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a grace period)."""
        self.close_admin()
        self.run("stop-kafka")

    def reset(self) -> None:
        """Stop every node and delete the cluster's data (the next ``up()`` formats a new one)."""
        self.close_admin()
        self.run("reset-kafka")

    def status(self) -> str:
        return self.run("status-kafka", check=False).stdout

    def node_status(self) -> dict[int, str]:
        """Node number -> "running" or "stopped", as ``services.sh status-kafka`` reports it."""
        states = {}
        for line in self.status().splitlines():
            if line.startswith("kafka node "):
                head, _, rest = line.partition(":")
                states[int(head.split()[-1])] = rest.split()[0]
        return states

    def stop_node(self, n: int) -> None:
        """SIGTERM node ``n`` and wait until it exited (a clean, controlled shutdown)."""
        self.run("stop-kafka-node", n)

    def start_node(self, n: int) -> None:
        """Start node ``n`` again; returns when it answers (registered and unfenced)."""
        self.run("start-kafka-node", n)

    # --- processes -----------------------------------------------------------------------------

    def pid(self, n: int) -> int | None:
        """The pid of node ``n`` while it runs, else None."""
        try:
            pid = int((self.node_dir(n) / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill(self, n: int, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
        """Send ``sig`` to node ``n``; for SIGKILL/SIGTERM, wait until the process is gone.
        Returns the pid signalled."""
        pid = self.pid(n)
        if pid is None:
            raise AssertionError(f"Kafka node {n} is not running")
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            wait_until(lambda: not _alive(pid), timeout, f"node {n} (pid {pid}) exits after signal {sig}")
        return pid

    def sigstop(self, n: int) -> int:
        """Freeze node ``n`` (SIGSTOP): it keeps its sockets but answers nothing."""
        return self.kill(n, signal.SIGSTOP)

    def sigcont(self, n: int) -> int:
        return self.kill(n, signal.SIGCONT)

    # --- what the cluster says -----------------------------------------------------------------

    def admin(self):
        """A shared admin client for this cluster (rebuilt after an error)."""
        if self._admin is None:
            self._admin = kafka_clients.admin("test-cluster-admin", kafka=self.settings())
        return self._admin

    def close_admin(self) -> None:
        kafka_clients.close_quietly(self._admin, None)
        self._admin = None

    def _ask(self, call: Callable[[Any], Any]):
        try:
            return call(self.admin())
        except KafkaError:
            self.close_admin()  # connections to a dead node may linger: start afresh next time
            raise

    def brokers_registered(self) -> list[int]:
        """Ids of the unfenced brokers the cluster reports (DescribeCluster)."""
        described = self._ask(lambda a: a.describe_cluster())
        return sorted(b["broker_id"] for b in described.get("brokers") or [] if not b.get("is_fenced"))

    def describe(self, topics: Iterable[str]) -> dict[str, dict[int, dict]]:
        """topic -> partition -> {"leader": id, "replicas": [...], "isr": [...]} (fresh metadata)."""
        topics = list(topics)
        out: dict[str, dict[int, dict]] = {}
        for t in self._ask(lambda a: a.describe_topics(topics)):
            if t.get("error_code"):
                # e.g. UnknownTopicOrPartition from a broker whose metadata lags behind: a KafkaError,
                # so wait_until polls again
                raise kafka_errors.for_code(t["error_code"])(f"topic {t.get('name')}")
            out[t["name"]] = {
                p["partition_index"]: {
                    "leader": p["leader_id"],
                    "replicas": list(p["replica_nodes"]),
                    "isr": list(p["isr_nodes"]),
                }
                for p in t["partitions"]
            }
        return out

    def leader_of(self, topic: str, partition: int) -> int:
        """The broker that leads ``topic``/``partition`` now (-1: none)."""
        return self.describe([topic])[topic][partition]["leader"]

    def topic_config(self, topic: str, name: str) -> str | None:
        from kafka.admin import ConfigResource, ConfigResourceType

        found = self._ask(lambda a: a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]))
        entry = found.get("topic", {}).get(topic, {}).get(name)
        return None if entry is None else entry.get("value")

    def active_controller(self) -> int:
        """The node that is the active controller (the KRaft quorum's leader).

        Asked with DescribeQuorum (a broker forwards it to the controllers); when no broker answers,
        read from the ``quorum-state`` files of the running nodes (the newest epoch's leader).
        Note that DescribeCluster's ``controller_id`` is not it: under KRaft, brokers report a
        random live broker there."""
        with contextlib.suppress(KafkaError):
            quorum = self._ask(lambda a: a.describe_metadata_quorum())
            leader = quorum["topics"][0]["partitions"][0]["leader_id"]
            if leader >= 0:
                return leader
        best = (-1, -1)
        for n in self.nodes:
            if self.pid(n) is None:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads(
                    (self.node_dir(n) / "data" / "__cluster_metadata-0" / "quorum-state").read_text()
                )
                if state.get("leaderId", -1) >= 0:
                    best = max(best, (state.get("leaderEpoch", -1), state["leaderId"]))
        return best[1]

    def in_sync(self, topics: Iterable[str]) -> bool:
        """Every partition has a leader and its full replica set in sync."""
        described = self.describe(topics)
        return all(
            p["leader"] >= 0 and sorted(p["isr"]) == sorted(p["replicas"])
            for parts in described.values()
            for p in parts.values()
        )

    def wait_all_in_sync(self, topics: Iterable[str], timeout: float = 90) -> None:
        topics = list(topics)
        wait_until(lambda: self.in_sync(topics), timeout, f"every partition of {topics} in sync")

    def wait_brokers(self, count: int | None = None, timeout: float = 60) -> list[int]:
        """Wait until ``count`` (default: all) brokers are registered and unfenced."""
        want = self.brokers if count is None else count
        return wait_until(
            lambda: (ids := self.brokers_registered()) and len(ids) == want and ids,
            timeout,
            f"{want} brokers registered",
        )


class SingleBroker(Cluster):
    """One broker of its own: services.sh's single-broker layout under its own state directory,
    on ``port`` (clients) and ``port + 1`` (controller)."""

    def __init__(self, port: int, state_dir: Path, sasl: tuple[str, str] | None = None):
        super().__init__(port=port, state_dir=state_dir, brokers=1, sasl=sasl)
        share_broker_jars(state_dir)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(STREAMFLOW_STATE_DIR=str(self.state_dir), KAFKA_CONTROLLER_PORT=str(self.port + 1))
        return env

    def node_dir(self, n: int) -> Path:
        return self.state_dir / "kafka"
