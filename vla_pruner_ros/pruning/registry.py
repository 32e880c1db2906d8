"""The table of pruning methods by name: owned here, filled by `methods.py`, read by `config.py`.

This module imports nothing from the package, so the config can validate a method name without
importing the methods, and the methods can import the config: no import cycle.  The package
`__init__` imports `methods`, so every built-in method is registered before any `PrunerConfig`
exists.
"""
from __future__ import annotations

from typing import Dict, Tuple

_REGISTRY: Dict[str, type] = {}


def register(name: str):
    """Class decorator: make a `Pruner` subclass selectable as `PrunerConfig(method=name)`."""

    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pruning method {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def method_names() -> Tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered as `name` (KeyError when unknown)."""
    return _REGISTRY[name]
