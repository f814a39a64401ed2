"""The module the ``tomeplug`` entry point names: it registers the strategy and imports nothing heavy."""

from collections.abc import Callable

from tomeplug import hookimpl


@hookimpl
def tomeplug_register_strategies(register: Callable[[type], None]) -> None:
    """Register ``pool2x2``."""
    from tomeplug_example_strategy.pool2x2 import Pool2x2Config

    register(Pool2x2Config)
