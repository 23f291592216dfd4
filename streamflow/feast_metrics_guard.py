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

import importlib.abc
import importlib.util
import sys

MODULE = "feast.metrics"


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        from streamflow import config  # (the one module that reads and changes the environment)

        chosen = config.prometheus_multiprocess_chosen()
        try:
            self._loader.exec_module(module)
        finally:
            if not chosen:
                config.forget_prometheus_multiprocess()
                values = sys.modules.get("prometheus_client.values")
                if values is not None:
                    values.ValueClass = values.MutexValue  # type: ignore[attr-defined]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != MODULE:
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Guard the first import of ``feast.metrics`` in this process (a no-op once it is imported)."""
    if MODULE not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
