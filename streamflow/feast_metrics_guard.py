"""Keep Feast's metrics module from putting this process's Prometheus metrics in multiprocess mode.

``feast.metrics`` (which ``feast.feature_store`` imports through ``feast.feature_server``) sets
``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` to a temporary directory of its own
when they are unset (for the gunicorn workers of ``feast serve``), then imports prometheus_client,
which reads the variable at its first import. Every metric of the process would then keep its
values in memory-mapped files shared by metric name: two registries of one process (two API apps,
two consumers) would count into each other, a new metric would start from an old one's values,
every increment would write to a file, and child processes would inherit the variables.

:func:`install` (called by ``streamflow/__init__.py``) puts a finder first on ``sys.meta_path``
for ``feast.metrics``. Once that module has run, the variables it set are removed again and
prometheus_client's value class is in-memory values, for every metric created from then on
(Feast's own metrics, which StreamFlow does not use, keep theirs). Variables that were set before
(by an operator who wants multiprocess mode) are left as they are, and so is the mode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from streamflow.first_import import FirstImport

MODULE = "feast.metrics"


def _keep_metrics_in_memory(run: Callable[[], None]) -> None:
    """Run Feast's metrics module, then undo what it did to this process's metrics (unless the
    variables were set before it)."""
    from streamflow import config  # (the one module that reads and changes the environment)

    chosen = config.prometheus_multiprocess_chosen()
    try:
        run()
    finally:
        if not chosen:
            config.forget_prometheus_multiprocess()
            values = sys.modules.get("prometheus_client.values")
            if values is not None:
                values.ValueClass = values.MutexValue  # type: ignore[attr-defined]


_HOOK = FirstImport(MODULE, _keep_metrics_in_memory)


def install() -> None:
    """Guard the first import of ``feast.metrics`` in this process (a no-op once it is imported)."""
    _HOOK.install()


def uninstall() -> None:
    _HOOK.uninstall()
