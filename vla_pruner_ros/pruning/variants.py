"""Method variants on the command line: `METHOD:FIELD=VALUE:FIELD=VALUE`.

eval-sim, replay and bench take a comma-separated `--methods` list; a variant adds PrunerConfig
fields to a method, so two variants of one method run side by side on the same seeds (and are paired):

    --methods none,vla_pruner,vla_pruner:action_source=current,vla_pruner:action_source=fused
    --methods vla_pruner:target_ms=40:min_keep_ratio=0.1

`split_method` turns such a name into the registered method and the overrides, typed like the
PrunerConfig defaults (bool: true/false, int, float, str) and validated by building a PrunerConfig.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from .config import PrunerConfig
from .registry import method_names

# fields a variant may not set: they are what the method name and the keep-ratio list already say
# (nor are they command-line options: tools/_arguments.py)
RESERVED = ("method", "keep_ratio", "enabled")


def _typed(field: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{field}={text!r}: expected true or false")
        return text.lower() == "true"
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if default is None:  # layer tuples: "1+2"
        return tuple(int(part) for part in text.split("+"))
    return text


def split_method(name: str) -> Tuple[str, Dict[str, Any]]:
    """'vla_pruner:action_source=current' -> ('vla_pruner', {'action_source': 'current'}); ValueError
    naming the problem for an unknown method, an unknown or reserved field, or a bad value."""
    method, *parts = name.strip().split(":")
    if method not in method_names():
        raise ValueError(f"method {method!r} is unknown; expected one of {', '.join(method_names())}")
    defaults = {f.name: f.default for f in dataclasses.fields(PrunerConfig)}
    overrides: Dict[str, Any] = {}
    for part in parts:
        field, sep, text = part.partition("=")
        if not sep or field not in defaults or field in RESERVED:
            raise ValueError(f"{name!r}: {part!r} is not FIELD=VALUE with a PrunerConfig field other than "
                             f"{', '.join(RESERVED)}")
        try:
            overrides[field] = _typed(field, text, defaults[field])
        except ValueError as error:
            raise ValueError(f"{name!r}: {error}") from None
    PrunerConfig(method=method, **overrides)  # validates the values (ValueError naming the field)
    return method, overrides


def variant_config(name: str, keep_ratio: float, **base: Any) -> PrunerConfig:
    """The PrunerConfig of a (possibly variant) method name at `keep_ratio`; `base` fields first, the
    variant's overrides on top."""
    method, overrides = split_method(name)
    return PrunerConfig(method=method, keep_ratio=keep_ratio, **{**base, **overrides})
