"""Patching by class swap: a module's class becomes a subclass of (mixin, original class).

Parameters, submodules and ``state_dict`` keys stay untouched, and undo is one assignment. The
subclasses are made once per (mixin, original) pair. Their ``__name__`` is readable
(``MergingSamAttention_Attention``: what ``print(model)`` shows); their ``__qualname__`` encodes both
classes' import paths (``Swapped_...``), which is what pickle records, so a fresh process finds them
again through this module's ``__getattr__``.
"""

from __future__ import annotations

import importlib
import re

from torch import nn

_PREFIX = "Swapped_"
_SEPARATOR = "_S"
_ESCAPES = {"_": "_u", ".": "_d", ":": "_c"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_cache: dict[tuple[type, type], type] = {}


def _encode(cls: type) -> str:
    path = f"{cls.__module__}:{cls.__qualname__}"
    return "".join(_ESCAPES.get(ch, ch) for ch in path)


def _decode(text: str) -> type:
    module, _, qualname = re.sub(r"_(.)", lambda m: _UNESCAPES[m.group(1)], text).partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def swapped_class(mixin: type, base: type) -> type:
    """The subclass of ``(mixin, base)`` used to patch modules of class ``base``."""
    key = (mixin, base)
    if key not in _cache:
        pickled_name = f"{_PREFIX}{_encode(mixin)}{_SEPARATOR}{_encode(base)}"
        namespace = {"__module__": __name__, "__qualname__": pickled_name, "_tomeplug_base": base}
        swapped = type(f"{mixin.__name__}_{base.__name__}", (mixin, base), namespace)
        _cache[key] = globals()[pickled_name] = swapped
    return _cache[key]


def __getattr__(name: str) -> type:
    if name.startswith(_PREFIX):
        mixin, base = name[len(_PREFIX) :].split(_SEPARATOR, 1)
        return swapped_class(_decode(mixin), _decode(base))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_swapped(module: nn.Module) -> bool:
    """Whether ``module``'s class was swapped by tomeplug."""
    return "_tomeplug_base" in type(module).__dict__


def swap_class(module: nn.Module, mixin: type) -> None:
    """Give ``module`` the behaviour of ``mixin`` on top of its own class (undoing an earlier swap)."""
    restore_class(module)
    module.__class__ = swapped_class(mixin, type(module))


def restore_class(module: nn.Module) -> None:
    """Give a swapped ``module`` its original class back; a module never swapped is left as it is."""
    if is_swapped(module):
        module.__class__ = type(module)._tomeplug_base
