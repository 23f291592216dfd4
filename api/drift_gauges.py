"""The gauges ``streamflow_drift_psi`` and ``streamflow_drift_ks`` (label ``feature``): the last
report of ``streamflow drift`` (its table ``model_drift``), read every ``interval`` seconds by a
thread of their own, so that a scrape never waits for the database."""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Gauge

from streamflow import config
from streamflow.errors import first_line

log = logging.getLogger("api.drift")


class DriftGauges:
    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        self.interval = interval
        self.registry = registry
        self.psi = Gauge(
            "streamflow_drift_psi",
            "Population stability index of a model feature (or churn_score) between the two snapshots "
            "of the last `streamflow drift`",
            ("feature",),
            registry=registry,
        )
        self.ks = Gauge(
            "streamflow_drift_ks",
            "Two-sample Kolmogorov-Smirnov statistic of a numeric model feature (or churn_score), same run",
            ("feature",),
            registry=registry,
        )
        self._shown: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, rows: list[tuple[str, float, float | None]]) -> None:
        """Show these (feature, psi, ks) rows, and no other feature."""
        names = {feature for feature, _, _ in rows}
        for gone in self._shown - names:
            for gauge in (self.psi, self.ks):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        for feature, psi, ks in rows:
            self.psi.labels(feature).set(psi)
            if ks is not None:
                self.ks.labels(feature).set(ks)
        self._shown = names

    def refresh(self) -> None:
        import psycopg

        from streamflow.churn.drift import read_stored

        try:
            with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
                rows = read_stored(conn)
        except psycopg.Error as exc:
            log.warning("cannot read the drift report: %s", first_line(exc))
            return
        self.update(rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-gauges", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)
