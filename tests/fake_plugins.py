"""Plugin modules made in tests, registered with a registry as an installed plugin would be."""

from __future__ import annotations

import importlib.metadata
import textwrap
import types
from pathlib import Path

import pytest

import tomeplug


def plugin_registering(*configs, name="fake_plugin"):
    """A plugin module named ``name`` whose registration hook registers ``configs``."""
    module = types.ModuleType(name)

    @tomeplug.hookimpl
    def tomeplug_register_strategies(register):
        for config in configs:
            register(config)

    module.tomeplug_register_strategies = tomeplug_register_strategies
    return module


def install(root: Path, module: str, dist: str, version: str, source: str) -> None:
    """Write ``module`` and its distribution's metadata, with a ``tomeplug`` entry point, into ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[tomeplug]\n{module} = {module}\n")


class FakeDist:
    """Stands in for an installed distribution: its name and version."""

    def __init__(self, name, version):
        self.name, self.version = name, version


class FakeEntryPoint:
    """Stands in for an installed distribution's entry point."""

    def __init__(self, name, target, dist):
        self.name, self.group, self.dist, self._target = name, "tomeplug", dist, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


@pytest.fixture
def fake_entry_points(monkeypatch):
    """A list of fake entry points that ``importlib.metadata.entry_points`` returns instead of the installed ones."""
    points = []
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [p for p in points if p.group == group])
    return points
