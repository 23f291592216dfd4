"""Import Feast without typeguard's import-time instrumentation.

Feast decorates its definition classes (``Field``, ``Entity``, ``FeatureView``, data sources, ...)
with typeguard's ``@typechecked``. typeguard 4 instruments a decorated function by re-reading and
recompiling its module's source, at import time, in every process: most of the cost of ``import
feast`` (typeguard issue #468). StreamFlow builds those objects from its own registry, which its
tests check, so its processes do without these run-time checks.

:func:`install` (called by ``streamflow/__init__.py``) puts a finder first on ``sys.meta_path``
that waits for the first import of the ``feast`` package. While that import runs, and while it
imports the Feast modules StreamFlow loads later (:data:`ALSO_IMPORTED`), ``typeguard.typechecked``
is a decorator that returns what it decorates; then the real one is put back. So:

- Feast's own code runs unchanged, without typeguard's argument checks on the classes above
  (a wrong argument type fails later, where Feast uses the value, instead of at the call);
- code outside Feast that uses typeguard keeps it, in the same process;
- the garbage collector is off while the import runs (it would only scan the objects it creates,
  which live on), and back on after it;
- a process that imported Feast before StreamFlow (``feast apply`` in ``feature_repo/``) keeps
  typeguard's checks, and its start-up cost.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from typing import Any

from streamflow.first_import import FirstImport

ALSO_IMPORTED = ("feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source",)
"""Feast modules with ``@typechecked`` that ``import feast`` does not load and StreamFlow uses."""


def _returns_target(target: Any = None, **_options: Any) -> Any:
    """``@typechecked`` and ``@typechecked(...)`` without the instrumentation."""
    return target if target is not None else _returns_target


def _without_typechecked() -> Callable[[], None]:
    """Replace ``typeguard.typechecked``; return what puts it back."""
    try:
        import typeguard
    except ImportError:  # Feast without typeguard: nothing to skip
        return lambda: None
    real = typeguard.typechecked
    typeguard.typechecked = _returns_target

    def restore() -> None:
        typeguard.typechecked = real

    return restore


def _import_without_typeguard(run: Callable[[], None]) -> None:
    """Run the ``feast`` package and :data:`ALSO_IMPORTED` with ``typechecked`` switched off and no
    garbage collection."""
    restore = _without_typechecked()
    collecting = gc.isenabled()
    gc.disable()  # the import allocates ~170,000 objects that live on: no collection over them meanwhile
    try:
        run()
        for name in ALSO_IMPORTED:
            try:
                importlib.import_module(name)
            except ImportError:  # pragma: no cover - an install without Feast's postgres extra
                pass
    finally:
        if collecting:
            gc.enable()
        restore()


_HOOK = FirstImport("feast", _import_without_typeguard)


def install() -> None:
    """Skip typeguard's instrumentation for the first import of Feast in this process (a no-op
    when Feast is imported already)."""
    _HOOK.install()


def uninstall() -> None:
    """Import Feast as it comes (with typeguard's instrumentation) from now on."""
    _HOOK.uninstall()
