"""Shared fixtures: a fresh registry per test with the built-in plugins, tiny official models."""

from __future__ import annotations

import os
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")  # tests register plugins explicitly
# Ultralytics, wherever a test imports it first: offline (no update checks, downloads, telemetry), quiet, and
# with its settings file in a private folder rather than the user's
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "tomeplug-tests-ultralytics"))

import pytest  # noqa: E402
import torch  # noqa: E402
from fake_plugins import fake_entry_points  # noqa: E402, F401  (a fixture for every test module)

import tomeplug_adapters  # noqa: E402
import tomeplug_strategies  # noqa: E402
from tomeplug.registry import Origin, Registry, use_registry  # noqa: E402
from tomeplug.torchvision_compat import ensure_torchvision  # noqa: E402

torch.set_num_threads(1)
ensure_torchvision()


def builtin_registry() -> Registry:
    """A registry holding exactly the built-in strategies and adapters."""
    registry = Registry(autoload=False)
    registry.register_plugin(tomeplug_strategies, "builtin_strategies", Origin("builtin_strategies", "tomeplug", "0"))
    registry.register_plugin(tomeplug_adapters, "builtin_adapters", Origin("builtin_adapters", "tomeplug", "0"))
    return registry


STRATEGIES = sorted(builtin_registry().strategies)


@pytest.fixture(autouse=True)
def registry():
    """Every test runs against a fresh registry of the built-ins (never what happens to be installed)."""
    with use_registry(builtin_registry()) as fresh:
        yield fresh


@pytest.fixture(params=STRATEGIES)
def strategy_name(request) -> str:
    """Each registered strategy in turn."""
    return request.param
