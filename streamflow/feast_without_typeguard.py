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
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

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


class _Loader(importlib.abc.Loader):
    """Feast's own loader, with ``typechecked`` switched off while the package and
    :data:`ALSO_IMPORTED` execute."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        restore = _without_typechecked()
        collecting = gc.isenabled()
        gc.disable()  # the import allocates ~170,000 objects that live on: no collection over them meanwhile
        try:
            self._loader.exec_module(module)
            for name in ALSO_IMPORTED:
                try:
                    importlib.import_module(name)
                except ImportError:  # pragma: no cover - an install without Feast's postgres extra
                    pass
        finally:
            if collecting:
                gc.enable()
            restore()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "feast":
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Skip typeguard's instrumentation for the first import of Feast in this process (a no-op
    when Feast is imported already)."""
    if "feast" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Import Feast as it comes (with typeguard's instrumentation) from now on."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
