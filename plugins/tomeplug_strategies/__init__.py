"""tomeplug's built-in strategies, registered through the ``tomeplug`` entry points like any plugin."""

from tomeplug.hookspecs import hookimpl


@hookimpl
def tomeplug_register_strategies(register):
    """Register the built-in strategies."""
    from tomeplug_strategies.tome import ToMeConfig

    register(ToMeConfig)
