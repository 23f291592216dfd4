"""A hook around the first import of one module in this process.

``FirstImport(name, around).install()`` puts a finder first on ``sys.meta_path``. When ``name`` is
imported for the first time, the finder takes itself off, finds the module as usual and wraps its
loader: executing the module becomes ``around(run)``, where ``run()`` executes it (``around`` must
call it once, and may do something before and after). Once the module is imported, or when it was
imported before :meth:`FirstImport.install`, the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

Around = Callable[[Callable[[], None]], None]


class _Loader(importlib.abc.Loader):
    """The module's own loader, its execution wrapped by ``around``."""

    def __init__(self, loader: importlib.abc.Loader, around: Around):
        self._loader = loader
        self._around = around

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._around(lambda: self._loader.exec_module(module))


class FirstImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, around: Around):
        self.module = module
        self.around = around

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        self.uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, self.around)
        return spec

    def install(self) -> None:
        """Wrap the module's first import (a no-op when it is imported already)."""
        if self.module not in sys.modules and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        """Import the module as it comes from now on."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)
