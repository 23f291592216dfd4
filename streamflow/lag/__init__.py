"""Consumer lag monitoring: per-partition lag in messages and seconds, Burrow-style statuses.

* :mod:`streamflow.lag.monitor` -- :class:`LagMonitor` samples a consumer group's committed
  offsets, log-end offsets, the age of the oldest unconsumed event and the partition owners.
* :mod:`streamflow.lag.status` -- :class:`StatusEvaluator` turns successive samples into
  OK / WARN / STALL / STOP / REWIND per partition and OK / WARN / ERR per group (pure, no I/O).
* :mod:`streamflow.lag.marks` -- how a rewind marks a deliberate replay, and how it is read back.
* :mod:`streamflow.lag.metrics` -- Prometheus gauges fed from a sample.
* :mod:`streamflow.lag.cli` -- ``streamflow lag``.

Only the pure parts are imported here, so ``import streamflow.lag`` never needs Kafka.
"""

from streamflow.lag.status import GroupStatus, PartitionStatus, Status, StatusEvaluator

__all__ = ["GroupStatus", "PartitionStatus", "Status", "StatusEvaluator"]
