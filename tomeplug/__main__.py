"""Command line: ``python -m tomeplug list`` shows every strategy and adapter and who registered it."""

from __future__ import annotations

import argparse
import sys

import attrs

from tomeplug.registry import Registry, get_registry

DESCRIPTION = "'python -m tomeplug list' shows every strategy and adapter and who registered it."
"""``--help``'s description: plain text (the module docstring is reStructuredText)."""


def _defaults(config_cls: type) -> str:
    fields = attrs.fields(config_cls)
    return ", ".join(f"{f.name}={f.default!r}" for f in fields)


def format_listing(registry: Registry) -> str:
    """The text of ``python -m tomeplug list`` for ``registry``."""
    lines = ["strategies:"]
    for name, entry in sorted(registry.strategies.items()):
        cls = entry.obj
        lines.append(f"  {name:<14} {_defaults(cls)}  (max r {cls.max_r})")
        lines.append(f"  {'':<14} registered by {entry.origin}")
    lines.append("adapters:")
    for name, entry in sorted(registry.adapters.items()):
        lines.append(f"  {name:<14} {entry.obj.describe()}")
        lines.append(f"  {'':<14} registered by {entry.origin}")
    if registry.failures:
        lines.append("failed plugins:")
        lines.extend(f"  {f.origin}: {f.reason}" for f in registry.failures)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(prog="python -m tomeplug", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list strategies and adapters with the plugin that registered each")
    parser.parse_args(argv)
    print(format_listing(get_registry()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
