"""Import hook: apply tomeplug's torchvision fallback the first time ``torchvision`` is imported.

``make`` runs ``python -m tomeplug._torchvision_hook``, which writes ``tomeplug_torchvision_hook.pth``
into the venv's site-packages. At every interpreter start that one line loads this file by its path
(not through the ``tomeplug`` package, so nothing heavy is imported) and puts :class:`TorchvisionFinder`
first on ``sys.meta_path``. Nothing else happens until ``import torchvision``: then the finder takes
itself off and calls :func:`tomeplug.torchvision_compat.ensure_torchvision`, which does nothing where
torchvision loads normally. The ``.pth`` line swallows every error (tomeplug uninstalled, ...), so it
never breaks the interpreter; ``TOMEPLUG_TORCHVISION_HOOK=0`` turns the hook off.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "tomeplug_torchvision_hook.pth"
DISABLE_VARIABLE = "TOMEPLUG_TORCHVISION_HOOK"

# Run by site.py at interpreter start; a .pth line is executed only if it starts with "import".
_STARTUP_CODE = """\
try:
    import importlib.util as u, os
    s = u.find_spec('tomeplug')
    p = os.path.join(list(s.submodule_search_locations)[0], '_torchvision_hook.py')
    h = u.spec_from_file_location('tomeplug._torchvision_hook', p)
    m = u.module_from_spec(h)
    h.loader.exec_module(m)
    m.install()
except Exception:
    pass
"""


class TorchvisionFinder:
    """Meta-path finder that runs ``ensure_torchvision()`` in place of the first ``import torchvision``."""

    is_tomeplug_torchvision_hook = True

    def find_spec(self, name, path=None, target=None):
        """A spec loaded by this finder for ``torchvision`` when another finder can find it; else None."""
        if name != "torchvision":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            real = finder.find_spec(name, path, target)
            if real is not None:
                spec = importlib.machinery.ModuleSpec(name, self, origin=real.origin)
                spec.submodule_search_locations = real.submodule_search_locations
                return spec
        return None

    def create_module(self, spec):
        """Import torchvision for real (through the fallback) and hand back that module."""
        uninstall()
        try:
            from tomeplug.torchvision_compat import ensure_torchvision
        except ImportError:  # tomeplug is gone: import torchvision as if there were no hook
            module = importlib.import_module("torchvision")
        else:
            ensure_torchvision()
            module = sys.modules["torchvision"]
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        """Nothing to run (the module is already imported); put back its own spec."""
        module.__spec__ = self._real_spec


def _is_hook(finder) -> bool:
    return getattr(finder, "is_tomeplug_torchvision_hook", False)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once; not when ``TOMEPLUG_TORCHVISION_HOOK=0``)."""
    if os.environ.get(DISABLE_VARIABLE) == "0" or "torchvision" in sys.modules:
        return
    if not any(_is_hook(finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionFinder())


def uninstall() -> None:
    """Take every copy of the finder off ``sys.meta_path``."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_hook(finder)]


def pth_line() -> str:
    """The ``.pth`` file's content: one ``import`` line that installs the hook and never raises."""
    return f"import sys; exec({_STARTUP_CODE!r})\n"


def write_pth(site_packages: str | os.PathLike | None = None) -> Path:
    """Write the ``.pth`` into ``site_packages`` (default: this interpreter's) and return its path."""
    directory = Path(site_packages or sysconfig.get_paths()["purelib"])
    path = directory / PTH_NAME
    path.write_text(pth_line())
    return path


if __name__ == "__main__":
    print(f"installed the torchvision import hook: {write_pth()}")
