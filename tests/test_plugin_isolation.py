"""A plugin that registers something wrong is skipped with a warning naming it; the others keep working.

The plugins here are real installed distributions (a module plus a ``.dist-info`` with a ``tomeplug``
entry point) written to a temporary folder on ``sys.path``, so ``importlib.metadata`` finds them as it
finds anything installed by pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from fake_plugins import install
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug.__main__ import format_listing
from tomeplug.registry import Registry

GOOD = """
import attrs
import tomeplug
from tomeplug_strategies.tome import ToMeConfig

@attrs.frozen(kw_only=True)
class GoodConfig(ToMeConfig):
    name = "good_tome"

@tomeplug.hookimpl
def tomeplug_register_strategies(register):
    register(GoodConfig)
"""

# plugin (entry point and module name) -> (distribution, version, source, what the failure must say)
BROKEN = {
    "iso_wrong_type": ("wrongtype-dist", "0.3", "register(dict)", "registered <class 'dict'> as a strategy"),
    "iso_half_good": (
        "halfgood-dist",
        "1.1",
        "register(type('HalfGood', (tomeplug.StrategyConfig,), {'name': 'half_good'}))\n    register(42)",
        "registered 42 as a strategy",
    ),
    "iso_hook_raises": (
        "hookraises-dist",
        "2.0",
        "from missing_dependency import Config",
        "ModuleNotFoundError: No module named 'missing_dependency'",
    ),
}
ADAPTER_CLASS = """
import tomeplug

class ToyAdapter(tomeplug.Adapter):
    name = "toy"

@tomeplug.hookimpl
def tomeplug_register_adapters(register):
    register(ToyAdapter)  # the class, not an instance
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path with a good plugin and the broken ones installed."""
    install(tmp_path, "iso_good", "good-dist", "1.0", GOOD)
    install(tmp_path, "iso_adapter_class", "adapterclass-dist", "0.9", ADAPTER_CLASS)
    for module, (dist, version, body, _) in BROKEN.items():
        source = f"import tomeplug\n\n@tomeplug.hookimpl\ndef tomeplug_register_strategies(register):\n    {body}\n"
        install(tmp_path, module, dist, version, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ["iso_good", "iso_adapter_class", *BROKEN]:
        sys.modules.pop(module, None)


def test_bad_registrations_are_skipped_and_named(site):
    registry = Registry(autoload=True)
    with pytest.warns(RuntimeWarning) as caught:
        strategies = registry.strategies
    messages = [str(w.message) for w in caught]
    failed = {f.origin.plugin: f for f in registry.failures}
    assert set(failed) == {*BROKEN, "iso_adapter_class"}  # nobody else is blamed
    for module, (dist, version, _, reason) in BROKEN.items():
        assert (failed[module].origin.distribution, failed[module].origin.version) == (dist, version)
        assert reason in failed[module].reason
        assert any(f"plugin {module!r} from {dist} {version}" in m and reason in m for m in messages)
    assert "expected a tomeplug.Adapter instance" in failed["iso_adapter_class"].reason
    assert "half_good" not in strategies  # a plugin that registers anything wrong is skipped whole
    assert "toy" not in registry.adapters
    assert strategies["good_tome"].origin.distribution == "good-dist"
    assert {"tome", "good_tome"} <= set(strategies) and "sam_vit" in registry.adapters


def test_others_keep_working(site):
    registry = Registry(autoload=True)
    with pytest.warns(RuntimeWarning), tomeplug.use_registry(registry):
        encoder = tiny_sam_encoder()
        image = torch.randn(1, 3, 256, 256)
        with torch.no_grad():
            reference = encoder(image)
            with tomeplug.patch(encoder, "good_tome", r=0.3):
                assert not torch.equal(encoder(image), reference)
            assert torch.equal(encoder(image), reference)


def test_listing_shows_failures_with_reason(site):
    registry = Registry(autoload=True)
    with pytest.warns(RuntimeWarning):
        listing = format_listing(registry)
    failures = listing.split("failed plugins:")[1]
    assert "plugin 'iso_wrong_type' from wrongtype-dist 0.3: PluginError:" in failures
    assert "registered by plugin 'iso_good' from good-dist 1.0" in listing


def test_cli_shows_failures_end_to_end(site):
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", None)
    done = subprocess.run([sys.executable, "-m", "tomeplug", "list"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    strategies, failures = done.stdout.split("failed plugins:")
    assert "good_tome" in strategies and "tome " in strategies
    for module, (dist, version, _, reason) in BROKEN.items():
        line = next(line for line in failures.splitlines() if f"plugin {module!r}" in line)
        assert f"from {dist} {version}: " in line and reason in line
    assert "RuntimeWarning: tomeplug: skipped plugin 'iso_wrong_type' from wrongtype-dist 0.3" in done.stderr


def test_runtime_plugin_whose_hook_raises_is_not_kept(registry):
    @tomeplug.hookimpl
    def tomeplug_register_strategies(register):
        raise ImportError("No module named 'missing_dependency'")

    plugin = types.ModuleType("raises_in_hook")
    plugin.tomeplug_register_strategies = tomeplug_register_strategies
    with pytest.raises(ImportError, match="missing_dependency"):
        registry.register_plugin(plugin)
    assert "tome" in registry.strategies  # later lookups do not call the broken hook again
