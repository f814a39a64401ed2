"""tomeplug's built-in strategies, registered through the ``tomeplug`` entry points like any plugin."""

from tomeplug.hookspecs import hookimpl


@hookimpl
def tomeplug_register_strategies(register):
    """Register the built-in strategies."""
    from tomeplug_strategies.grad_tome import GradToMeConfig
    from tomeplug_strategies.pitome import PiToMeConfig, PiToMeV1Config, PiToMeV2Config
    from tomeplug_strategies.tome import ToMeConfig
    from tomeplug_strategies.tomesd import ToMeSDConfig

    for config_class in (ToMeConfig, GradToMeConfig, PiToMeConfig, PiToMeV1Config, PiToMeV2Config, ToMeSDConfig):
        register(config_class)
