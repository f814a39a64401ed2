"""Plugin modules made in tests, registered with a registry as an installed plugin would be."""

from __future__ import annotations

import types

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
