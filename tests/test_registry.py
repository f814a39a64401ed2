"""The plugin registry: lazy entry-point loading, origins, duplicates, isolation, the CLI."""

from __future__ import annotations

import subprocess
import sys

import attrs
import pytest
from fake_plugins import FakeDist, FakeEntryPoint, plugin_registering

import tomeplug
from tomeplug.__main__ import format_listing
from tomeplug.registry import PluginError, Registry
from tomeplug_strategies.tome import ToMeConfig


@attrs.frozen(kw_only=True)
class EchoConfig(ToMeConfig):
    name = "echo"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )


def test_import_scans_nothing():
    done = run_python(
        "import sys, tomeplug; print('tomeplug_strategies' in sys.modules, tomeplug.registry._default is None)",
        TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD="",
    )
    assert done.stdout.split() == ["False", "True"]


def test_entry_points_load_once_lazily_with_origin(fake_entry_points, monkeypatch):
    loads = []
    plugin = plugin_registering(EchoConfig)
    fake_entry_points.append(FakeEntryPoint("echo_plugin", plugin, FakeDist("echo-dist", "1.2.3")))
    original = FakeEntryPoint.load
    monkeypatch.setattr(FakeEntryPoint, "load", lambda self: loads.append(self.name) or original(self))
    registry = Registry(autoload=True)
    assert loads == []  # creating the registry scans nothing
    entry = registry.strategies["echo"]
    registry.strategy("echo")
    registry.adapters  # noqa: B018
    assert loads == ["echo_plugin"]
    assert entry.obj is EchoConfig
    assert (entry.origin.plugin, entry.origin.distribution, entry.origin.version) == (
        "echo_plugin",
        "echo-dist",
        "1.2.3",
    )
    assert "registered by plugin 'echo_plugin' from echo-dist 1.2.3" in format_listing(registry)


def test_env_var_turns_autoload_off(fake_entry_points, monkeypatch):
    fake_entry_points.append(FakeEntryPoint("echo_plugin", plugin_registering(EchoConfig), FakeDist("d", "1")))
    monkeypatch.setenv("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry().strategies == {}
    monkeypatch.setenv("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", "")
    assert list(Registry().strategies) == ["echo"]


def test_plugin_registering_one_name_twice_itself_raises(registry):
    """(A name registered by two plugins is a conflict both survive: tests/test_plugin_safety.py.)"""
    with pytest.raises(PluginError, match=r"plugin 'twice' \(registered at runtime\) registers the name 'echo' twice"):
        registry.register_plugin(plugin_registering(EchoConfig, EchoConfig, name="twice"))
    assert "echo" not in registry.strategies
    assert registry.strategy("tome") is ToMeConfig


def test_bad_registration_raises(registry):
    with pytest.raises(PluginError, match="expected a tomeplug.StrategyConfig subclass"):
        registry.register_plugin(plugin_registering(dict, name="wrong"))


def test_broken_plugins_are_isolated(fake_entry_points):
    fake_entry_points += [
        FakeEntryPoint("broken_import", ImportError("No module named 'missing_dep'"), FakeDist("broken-dist", "0.1")),
        FakeEntryPoint("good", plugin_registering(EchoConfig, name="good"), FakeDist("good-dist", "1.0")),
        FakeEntryPoint("dupe", plugin_registering(EchoConfig, name="dupe"), FakeDist("dupe-dist", "2.0")),
    ]
    registry = Registry(autoload=True)
    with pytest.warns(RuntimeWarning) as caught:
        assert list(registry.strategies) == ["good:echo", "dupe:echo"]  # a name both register: qualified
    messages = [str(w.message) for w in caught]
    assert any("broken-dist 0.1" in m and "missing_dep" in m for m in messages)
    assert any("'echo' is registered by plugin 'good' from good-dist 1.0 and by plugin 'dupe'" in m for m in messages)
    assert registry.strategies["good:echo"].origin.distribution == "good-dist"
    assert [f.origin.plugin for f in registry.failures] == ["broken_import"]
    listing = format_listing(registry)
    assert "failed plugins:" in listing and "broken-dist 0.1: ImportError" in listing


def test_list_strategies_and_adapters():
    assert "tome" in tomeplug.list_strategies()
    assert {"sam_vit", "hq_sam_vit"} <= set(tomeplug.list_adapters())


def test_cli_lists_installed_plugins_with_distribution():
    done = run_python("from tomeplug.__main__ import main; main(['list'])", TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD="")
    assert "tome" in done.stdout and "sam_vit" in done.stdout
    assert f"from tomeplug {tomeplug.__version__}" in done.stdout
    help_text = subprocess.run([sys.executable, "-m", "tomeplug", "--help"], capture_output=True, text=True).stdout
    assert "list" in help_text


def test_listing_aligns_every_name_in_one_column(registry):
    """The longest adapter name (``ultralytics_sam2_hiera``) does not push its description out of the column."""
    listing = format_listing(registry).splitlines()
    rows = [line for line in listing if line.startswith("  ") and not line.startswith("   ")]
    columns = {len(line) - len(line[2:].split(" ", 1)[1].lstrip()) for line in rows}  # where the text starts
    width = max(map(len, [*registry.strategies, *registry.adapters]))
    assert columns == {2 + width + 1}
    assert {len(line) - len(line.lstrip()) for line in listing if "registered by" in line} == {2 + width + 1}
