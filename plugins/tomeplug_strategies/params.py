"""attrs validators for strategy parameters, with messages that say what the parameter means."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs


def real_in(low: float, high: float, meaning: str, *, open_low: bool = False) -> Callable[..., None]:
    """Validator: a finite real number (not a bool) in [low, high] ((low, high] with ``open_low``; high may be inf)."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if math.isinf(high) else ']'}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{attribute.name} must be a real number ({meaning}), got {value!r}")
        too_low = value <= low if open_low else value < low
        if not math.isfinite(value) or too_low or value > high:
            raise ValueError(
                f"{attribute.name}={value!r} is out of range for strategy {type(instance).name!r}: "
                f"{attribute.name} is {meaning} and must lie in {interval}"
            )

    return check


def int_in(low: int, high: int, meaning: str) -> Callable[..., None]:
    """Validator: an int (not a bool) in [low, high]."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int ({meaning}), got {value!r}")
        if not low <= value <= high:
            raise ValueError(
                f"{attribute.name}={value} is out of range for strategy {type(instance).name!r}: "
                f"{attribute.name} is {meaning} and must lie in [{low}, {high}]"
            )

    return check


def one_of(choices: tuple[str, ...], meaning: str) -> Callable[..., None]:
    """Validator: one of the strings ``choices``."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(
                f"{attribute.name}={value!r} is not valid for strategy {type(instance).name!r}: "
                f"{attribute.name} is {meaning}; choose one of {', '.join(map(repr, choices))}"
            )

    return check
