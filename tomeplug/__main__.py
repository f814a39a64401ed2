"""Command line: ``python -m tomeplug list`` shows every strategy and adapter and who registered it."""

from __future__ import annotations

import argparse
import sys

import attrs

from tomeplug.registry import Entry, Registry, get_registry

DESCRIPTION = "'python -m tomeplug list' shows every strategy and adapter and who registered it."
"""``--help``'s description: plain text (the module docstring is reStructuredText)."""


def _defaults(config_cls: type) -> str:
    fields = attrs.fields(config_cls)
    return ", ".join(f"{f.name}={f.default!r}" for f in fields)


def _by_name(entries: dict[str, Entry]) -> list[tuple[str, Entry]]:
    """Entries sorted by their plain name, so the qualified names of one conflict sit together."""
    return sorted(entries.items(), key=lambda item: (item[1].name, item[0]))


def format_listing(registry: Registry) -> str:
    """The text of ``python -m tomeplug list`` for ``registry``."""
    width = max(map(len, [*registry.strategies, *registry.adapters]), default=0)  # one column for all names
    lines = ["strategies:"]
    for name, entry in _by_name(registry.strategies):
        cls = entry.obj
        lines.append(f"  {name:<{width}} {_defaults(cls)}  (max r {cls.max_r})")
        lines.append(f"  {'':<{width}} registered by {entry.origin}")
    lines.append("adapters:")
    for name, entry in _by_name(registry.adapters):
        target = "" if entry.obj.target == "encoder" else f" [target {entry.obj.target}]"
        lines.append(f"  {name:<{width}} {entry.obj.describe()}{target}")
        lines.append(f"  {'':<{width}} registered by {entry.origin}")
    if registry.conflicts:
        lines.append("name conflicts (each plugin's entry is listed above by its qualified name):")
        lines.extend(f"  {conflict}" for conflict in registry.conflicts)
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
